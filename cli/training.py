"""``facerank train``, ``pretrain`` and ``precision``: learn a model, a face prior, or switch
the arithmetic the model runs in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facerank.cli.common import (JsonOption, StoreOption, emit_json, handles_errors, report_faces,
                                 report_skipped, store_path)
# The recipes' defaults, for the help text only: options not given pass None, and the library
# fills in its own default (recipes import no torch, so --help stays fast).
from facerank.training.recipes import (MARGIN, PRETRAIN, PRETRAIN_MARGINS, PRETRAIN_MIN_PHOTOS,
                                       TrainConfig)

_DEFAULTS = TrainConfig()


@handles_errors
def train(
    gallery: Path = typer.Argument(..., help="Folder with one sub-folder of images per person."),
    store: Optional[Path] = StoreOption,
    preset: str = typer.Option("auto", help="Recipe: sgd, freeze, scratch, finetune, or auto "
                               "(scratch for --weights none, finetune for a facerank base, else "
                               "sgd)."),
    weights: str = typer.Option("imagenet", help="Backbone start: imagenet (downloaded once to "
                                "$TORCH_HOME), none (random), a facerank base folder (`facerank "
                                "pretrain`), or a path to a ResNet50 state dict."),
    epochs: Optional[int] = typer.Option(None, help="Override the preset's epochs."),
    image_size: Optional[int] = typer.Option(None, help="Override the preset's input size (px)."),
    lr: Optional[float] = typer.Option(None, help="Override the preset's learning rate."),
    batch_size: Optional[int] = typer.Option(None, help="Override the preset's batch size."),
    test_fraction: Optional[float] = typer.Option(
        None, help=f"Held-out share of each person's images (default {_DEFAULTS.test_fraction})."),
    seed: Optional[int] = typer.Option(None, help="Seed for the split, initialisation and "
                                       f"augmentation (default {_DEFAULTS.seed})."),
    shear: Optional[float] = typer.Option(None, help="Random shear augmentation, degrees."),
    zoom: Optional[float] = typer.Option(None, help="Random zoom augmentation, +- fraction."),
    loss: Optional[str] = typer.Option(None, help="softmax (preset default), cosface or arcface: "
                                       "a cosine head trained with a margin."),
    margin: Optional[float] = typer.Option(None, help=f"cosface/arcface margin (default {MARGIN})."),
    crop: Optional[float] = typer.Option(None, help="Keep the centred square of this share of each image "
                               "before resizing (0.5 for LFW-style 250 px face frames); saved "
                               "with the model and applied to queries too."),
    balanced: bool = typer.Option(False, "--balanced", help="Draw people evenly in each epoch, "
                                  "however many images each has."),
    keep: Optional[str] = typer.Option(None, help="Save the last epoch (the default), or best: "
                                       "the epoch with the best held-out accuracy (that accuracy "
                                       "is then optimistic)."),
    frozen_bn: Optional[bool] = typer.Option(
        None, "--frozen-bn/--batch-bn", help="Batch norm: keep the starting weights' statistics "
        "while training (finetune's default) or learn from each batch (the other presets')."),
    frozen_bn_tail: Optional[float] = typer.Option(
        None, help="With batch statistics (--batch-bn): the last share of the epochs trains "
        "with batch norm frozen at the statistics learnt so far, as queries will see it "
        "(default 0 = never; 0.15 makes `identify`'s unknown answers usable from scratch, "
        "at a cost in top-1)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its checkpoint."),
    cached_features: bool = typer.Option(
        False, "--cached-features", help="freeze preset only: run the frozen layers once per "
        "image and view, then train the last stage on their stored outputs (faster epochs)."),
    feature_views: Optional[int] = typer.Option(
        None, help="With --cached-features: augmented views cached per image (default "
        f"{_DEFAULTS.feature_views})."),
    faces: str = typer.Option("auto", help="Face step: auto (dlib-hog where the faces extra is "
                              "installed, else none), dlib-hog, dlib-cnn (with --face-model), or "
                              "none (the whole image). Saved with the model; queries use it too."),
    face_model: Optional[Path] = typer.Option(None, help="Weights file of a face detector that "
                                              "needs one (dlib-cnn: mmod_human_face_detector.dat)."),
    no_face: Optional[str] = typer.Option(None, help="A photo with no face found: whole (use the "
                                          "whole image; right for tight crops; the default) "
                                          "or skip."),
    allow_base_mismatch: bool = typer.Option(
        False, "--allow-base-mismatch", help="Fine-tune a facerank base with another input "
        "size, crop or face step than it was pretrained with."),
    workers: int = typer.Option(1, help="Data-parallel training processes on Ray (1: train "
                                "here, without Ray). The batch size is split among them."),
    gpus_per_worker: float = typer.Option(0, help="With --workers: GPUs per worker (NCCL); 0 "
                                          "trains on CPUs (gloo)."),
    ray: str = typer.Option("auto", "--ray", help="With --workers: the Ray cluster, auto (the "
                            "one on this machine, else a new local one), ray://HOST:PORT or "
                            "HOST:PORT. Gallery and store must be paths every node sees."),
    as_json: bool = JsonOption,
):
    """Fine-tune ResNet50 on GALLERY and save the model into the store.

    Writes loss/accuracy per epoch (history and curves) into the store, and prints where.

    Examples:
      facerank train photos/ --store faces/ --weights none --epochs 40
      facerank train lfw/ --store faces/ --weights none --loss cosface --balanced
      facerank train photos/ --store faces/ --faces dlib-hog --no-face skip
      facerank train photos/ --store faces/ --weights base/     # fine-tune a face prior
      facerank train photos/ --store faces/ --workers 4 --gpus-per-worker 1 --ray ray://head:10001
    """
    from facerank.faces.detection import FaceStep
    from facerank.training.loop import train as run_training
    from facerank.training.recipes import recipe

    # None (an option not given, a flag not set) leaves the recipe's own value.
    config = recipe(weights, preset, epochs=epochs, image_size=image_size, lr=lr,
                    batch_size=batch_size, feature_views=feature_views, loss=loss, margin=margin,
                    shear=shear, zoom=zoom, crop=crop, test_fraction=test_fraction, seed=seed,
                    cached_features=cached_features or None, balanced=balanced or None,
                    keep=keep, frozen_bn=frozen_bn, frozen_bn_tail=frozen_bn_tail)
    name = config.preset
    folder = store_path(store)
    options = dict(resume=resume, faces=faces, face_model=face_model, no_face=no_face,
                   allow_base_mismatch=allow_base_mismatch)
    if workers == 1:
        result = run_training(gallery, folder, config, weights=weights,
                              show_progress=not as_json, **options)
    else:
        from facerank.scale.training import train_on_ray

        result = train_on_ray(gallery, folder, config, weights=weights, workers=workers,
                              gpus_per_worker=gpus_per_worker, address=ray, **options)
    step = FaceStep.from_json(result.faces)
    if as_json:
        emit_json({"store": str(folder), "preset": name, **result.to_json()})
        return
    report_skipped(result.skipped)
    report_faces(result.no_face, result.several_faces, whole=step.no_face == "whole")
    last = result.history[-1]
    typer.echo(f"trained '{name}' on {result.train_images} images of {len(result.people)} people "
               f"in {result.seconds:.0f}s (weights: {result.weights_origin}"
               + (f", {result.workers} data-parallel workers)" if result.workers > 1 else ")"))
    typer.echo(step.describe())
    if result.test_accuracy is not None:
        typer.echo(f"held-out accuracy {result.test_accuracy:.1%} on {result.test_images} images "
                   f"(model of epoch {result.kept_epoch} of {last['epoch']}, kept: {config.keep})")
    if result.train_only:
        typer.echo(f"trained on but not tested (one image each): {', '.join(result.train_only)}")
    typer.echo(f"model saved in {folder}; curves in {result.curves_path}")
    typer.echo(f"next: facerank index build {gallery} --store {folder}")


@handles_errors
def pretrain(
    corpus: Path = typer.Argument(..., help="A face corpus: one sub-folder of photos per person "
                                  "(thousands of people)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the base (base.json + "
                             "weights), its history, curves and checkpoint."),
    weights: str = typer.Option("imagenet", help="Start from: imagenet (downloaded once to "
                                "$TORCH_HOME), none (random), a file, or another base."),
    loss: Optional[str] = typer.Option(None, help="Margin loss: " + " or ".join(
        f"{name} (margin {value}{' rad' if name == 'arcface' else ''})"
        for name, value in PRETRAIN_MARGINS.items()) + f"; default {PRETRAIN.loss}."),
    margin: Optional[float] = typer.Option(None, help="Override the loss's margin."),
    epochs: Optional[int] = typer.Option(None, help=f"Epochs (default {PRETRAIN.epochs})."),
    image_size: Optional[int] = typer.Option(None, help="Aligned face size in px (default "
                                             f"{PRETRAIN.image_size}); fine-tuning uses the "
                                             "same."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default "
                                             f"{PRETRAIN.batch_size})."),
    lr: Optional[float] = typer.Option(None, help=f"Peak learning rate (default {PRETRAIN.lr})."),
    min_photos: Optional[int] = typer.Option(None, help="People with fewer photos are left out "
                                             f"(default {PRETRAIN_MIN_PHOTOS})."),
    held_out: Optional[float] = typer.Option(None, help="Share of the people never trained on, "
                                             "whose pairs are scored each epoch (default "
                                             f"{PRETRAIN.test_fraction})."),
    seed: Optional[int] = typer.Option(None, help="Seed for the held-out people, initialisation "
                                       f"and augmentation (default {PRETRAIN.seed})."),
    faces: str = typer.Option("auto", help="Face step (as for train): auto, dlib-hog, dlib-cnn "
                              "or none. Saved with the base; fine-tuning uses it too."),
    face_model: Optional[Path] = typer.Option(None, help="Weights file of a face detector that "
                                              "needs one (dlib-cnn)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its checkpoint."),
    device: str = typer.Option("cpu", help="cpu, or cuda to train on a GPU (bf16 autocast "
                               "where it has native bf16)."),
    as_json: bool = JsonOption,
):
    """Pretrain a face prior on many people's faces; save it as a base for `train --weights`.

    Each epoch prints the loss and how well the face prints tell apart people held out of
    training (pairs of their photos: accuracy at the best threshold, and ROC AUC).

    Examples:
      facerank pretrain corpus/ --out base/ --weights none --epochs 20
      facerank pretrain corpus/ --out base/ --weights none --resume
      facerank pretrain corpus/ --out base/ --weights imagenet --device cuda
      facerank train photos/ --store faces/ --weights base/
    """
    from facerank.faces.detection import face_step
    from facerank.training.pretrain import pretrain as run_pretraining, pretrain_recipe

    config = pretrain_recipe(loss=loss, epochs=epochs, image_size=image_size, lr=lr,
                             batch_size=batch_size, margin=margin, test_fraction=held_out,
                             seed=seed)

    def report(row: dict) -> None:
        if not as_json:
            score = (f"; unseen people's pairs {row['pair_accuracy']:.1%} (AUC "
                     f"{row['pair_auc']:.3f})" if "pair_auc" in row else "")
            typer.echo(f"epoch {row['epoch']}/{config.epochs}: loss {row['train_loss']:.3f}, "
                       f"train top-1 {row['train_accuracy']:.1%}{score} "
                       f"[{row['seconds']:.0f}s]")

    given = {} if min_photos is None else {"min_photos": min_photos}  # else the library's default
    result = run_pretraining(corpus, out, config, weights=weights,
                             faces=face_step(faces, model_file=face_model), resume=resume,
                             show_progress=not as_json, device=device, on_epoch=report, **given)
    if as_json:
        emit_json({"out": str(out), **result.to_json()})
        return
    report_skipped(result.skipped)
    from facerank.model.base import BaseConfig

    base = BaseConfig.from_json(result.base)
    report_faces(result.no_face, result.several_faces, whole=base.faces.no_face == "whole")
    typer.echo(base.describe())
    typer.echo(f"base saved in {out} in {result.seconds:.0f}s; curves in {result.curves_path}")
    typer.echo(f"next: facerank train PHOTOS/ --store faces/ --weights {out}")


@handles_errors
def precision(
    choice: Optional[str] = typer.Argument(None, metavar="[fp32|int8]",
                                           help="Switch to this precision; omit to show it."),
    store: Optional[Path] = StoreOption,
    as_json: bool = JsonOption,
):
    """Show or switch the arithmetic the store's network runs in: fp32 (default) or int8.

    int8 embeds 3-5x faster on CPUs with AVX-512 VNNI; its face prints differ slightly.

    Afterwards re-embed with `index build` and re-set the threshold with `calibrate`.

    Examples:
      facerank precision --store faces/
      facerank precision int8 --store faces/ && facerank index build photos/ --store faces/
    """
    from facerank.model.config import read_config
    from facerank.model.precision import set_precision

    folder = store_path(store)
    before = read_config(folder).precision
    if choice:
        from rich.console import Console

        # Quantising calibrates on up to 200 training images: tens of seconds at 224 px.
        with Console(stderr=True, quiet=as_json).status(f"switching to {choice} ..."):
            config = set_precision(folder, choice)
    else:
        config = read_config(folder)
    changed = config.precision != before
    if as_json:
        emit_json({"precision": config.precision, "changed": changed,
                    "path": config.int8_file if config.precision == "int8" else config.onnx_file})
        return
    typer.echo(f"precision {config.precision}" + (f" (was {before})" if changed else ""))
    if changed:
        typer.echo("next: `facerank index build GALLERY` re-embeds the gallery, then "
                   "`facerank calibrate` sets the thresholds again", err=True)
