"""``facerank``: train, index, query, classify, evaluate and demo from the shell.

Every command is a few lines over the library. Errors become one line on stderr and an exit code:
0 success, 1 a facerank error (missing store, unreadable photo, ...), 2 a usage error, 3 (doctor)
the gallery has problems, 4 (verify) different people, 5 (query, faces) a photo with no face.
Set ``FACERANK_DEBUG=1`` or pass ``--debug`` for the full traceback.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from facerank.errors import FacerankError

app = typer.Typer(
    name="facerank", no_args_is_help=True, add_completion=False,
    help="Fine-tune ResNet50 on your own people, index its face prints, and ask of a photo "
         "who it is and which gallery images are closest.\n\n"
         "Example:  facerank train GALLERY/ --store faces/ && facerank index build GALLERY/ "
         "--store faces/ && facerank query photo.jpg --store faces/")
index_app = typer.Typer(no_args_is_help=True, help="Build, change and inspect a store's index.")
app.add_typer(index_app, name="index")

_debug = {"on": bool(os.environ.get("FACERANK_DEBUG"))}

StoreOption = typer.Option(None, "--store", "-s", help="Store folder (default: $FACERANK_STORE, "
                           "else ./facerank-store).", show_default=False)
JsonOption = typer.Option(False, "--json", help="Print JSON for scripts instead of tables.")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    if debug:
        _debug["on"] = True


def handles_errors(command):
    """Turn facerank errors into one line and exit 1; bad arguments into exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                if not _debug["on"]:
                    warnings.simplefilter("ignore", UserWarning)
                return command(*args, **kwargs)
        except (FacerankError, ImportError, ValueError, TypeError) as error:
            if _debug["on"]:
                raise
            typer.echo(f"error: {error}", err=True)  # ImportError: an optional extra is missing
            raise typer.Exit(1 if isinstance(error, (FacerankError, ImportError)) else 2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _store_path(store: Optional[Path]) -> Path:
    from facerank.api import default_store_path

    return store if store is not None else default_store_path()


def _emit_json(value) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _console():
    from rich.console import Console

    return Console()


NO_FACE_EXIT = 5


def _report_faces(no_face, several_faces, whole: bool) -> None:
    """Name the gallery photos the face step found no face in, or several."""
    for paths, what in ((no_face, "no face found" + (" (the whole image was used)" if whole
                                                     else " (skipped)")),
                        (several_faces, "several faces (the largest was taken as the person)")):
        if paths:
            typer.echo(f"{len(paths)} photo(s) with {what}:", err=True)
            for path in paths[:10]:
                typer.echo(f"  {path}", err=True)
            if len(paths) > 10:
                typer.echo(f"  ... and {len(paths) - 10} more (use --json for all)", err=True)


def _report_skipped(skipped) -> None:
    if skipped:
        typer.echo(f"skipped {len(skipped)} file(s):", err=True)
        for path, reason in skipped[:20]:
            typer.echo(f"  {path}: {reason}", err=True)
        if len(skipped) > 20:
            typer.echo(f"  ... and {len(skipped) - 20} more (use --json for all)", err=True)


# -- train ---------------------------------------------------------------------------------------

@app.command()
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
    test_fraction: float = typer.Option(0.3, help="Held-out share of each person's images."),
    seed: int = typer.Option(0, help="Seed for the split, initialisation and augmentation."),
    shear: Optional[float] = typer.Option(None, help="Random shear augmentation, degrees."),
    zoom: Optional[float] = typer.Option(None, help="Random zoom augmentation, +- fraction."),
    loss: Optional[str] = typer.Option(None, help="softmax (preset default), cosface or arcface: "
                                       "a cosine head trained with a margin."),
    margin: Optional[float] = typer.Option(None, help="cosface/arcface margin (default 0.2)."),
    crop: Optional[float] = typer.Option(None, help="Keep the centred square of this share of each image "
                               "before resizing (0.5 for LFW-style 250 px face frames); saved "
                               "with the model and applied to queries too."),
    balanced: bool = typer.Option(False, "--balanced", help="Draw people evenly in each epoch, "
                                  "however many images each has."),
    keep: str = typer.Option("last", help="Save the last epoch, or best: the epoch with the "
                             "best held-out accuracy (that accuracy is then optimistic)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its checkpoint."),
    cached_features: bool = typer.Option(
        False, "--cached-features", help="freeze preset only: run the frozen layers once per "
        "image and view, then train the last stage on their stored outputs (faster epochs)."),
    feature_views: Optional[int] = typer.Option(
        None, help="With --cached-features: augmented views cached per image (default 2)."),
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

    Writes loss/accuracy per epoch to STORE/train/history.json and curves.png.

    Examples:
      facerank train photos/ --store faces/ --weights none --epochs 40
      facerank train lfw/ --store faces/ --weights none --loss cosface --balanced
      facerank train photos/ --store faces/ --faces dlib-hog --no-face skip
      facerank train photos/ --store faces/ --weights base/     # fine-tune a face prior
      facerank train photos/ --store faces/ --workers 4 --gpus-per-worker 1 --ray ray://head:10001
    """
    from facerank.faces import FaceStep
    from facerank.gallery import TRAIN_FOLDER
    from facerank.train import recipe, train as run_training

    overrides = {k: v for k, v in dict(epochs=epochs, image_size=image_size, lr=lr,
                                       batch_size=batch_size, feature_views=feature_views,
                                       loss=loss, margin=margin, shear=shear, zoom=zoom,
                                       crop=crop).items() if v is not None}
    config = recipe(weights, preset, test_fraction=test_fraction, seed=seed,
                    cached_features=cached_features, balanced=balanced, keep=keep, **overrides)
    name = config.preset
    folder = _store_path(store)
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
        _emit_json({"store": str(folder), "preset": name, **result.to_json()})
        return
    _report_skipped(result.skipped)
    _report_faces(result.no_face, result.several_faces, whole=step.no_face == "whole")
    last = result.history[-1]
    typer.echo(f"trained '{name}' on {result.train_images} images of {len(result.people)} people "
               f"in {result.seconds:.0f}s (weights: {result.weights_origin}"
               + (f", {result.workers} data-parallel workers)" if result.workers > 1 else ")"))
    typer.echo(step.describe())
    if result.test_accuracy is not None:
        typer.echo(f"held-out accuracy {result.test_accuracy:.1%} on {result.test_images} images "
                   f"(model of epoch {result.kept_epoch} of {last['epoch']}, kept: {keep})")
    if result.train_only:
        typer.echo(f"trained on but not tested (one image each): {', '.join(result.train_only)}")
    typer.echo(f"model saved in {folder}; curves in {folder / TRAIN_FOLDER / 'curves.png'}")
    typer.echo(f"next: facerank index build {gallery} --store {folder}")


@app.command()
@handles_errors
def pretrain(
    corpus: Path = typer.Argument(..., help="A face corpus: one sub-folder of photos per person "
                                  "(thousands of people)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the base (base.json + "
                             "weights), its history, curves and checkpoint."),
    weights: str = typer.Option("imagenet", help="Start from: imagenet (downloaded once to "
                                "$TORCH_HOME), none (random), a file, or another base."),
    loss: str = typer.Option("cosface", help="Margin loss: cosface (margin 0.35) or arcface "
                             "(margin 0.3 rad)."),
    margin: Optional[float] = typer.Option(None, help="Override the loss's margin."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default 20)."),
    image_size: Optional[int] = typer.Option(None, help="Aligned face size in px (default 64); "
                                             "fine-tuning uses the same."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default 64)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default 2e-3)."),
    min_photos: int = typer.Option(2, help="People with fewer photos are left out."),
    held_out: float = typer.Option(0.05, help="Share of the people never trained on, whose "
                                   "pairs are scored each epoch."),
    seed: int = typer.Option(0, help="Seed for the held-out people, initialisation and "
                             "augmentation."),
    faces: str = typer.Option("auto", help="Face step (as for train): auto, dlib-hog, dlib-cnn "
                              "or none. Saved with the base; fine-tuning uses it too."),
    face_model: Optional[Path] = typer.Option(None, help="Weights file of a face detector that "
                                              "needs one (dlib-cnn)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its checkpoint."),
    as_json: bool = JsonOption,
):
    """Pretrain a face prior on many people's faces; save it as a base for `train --weights`.

    Each epoch prints the loss and how well the face prints tell apart people held out of
    training (pairs of their photos: accuracy at the best threshold, and ROC AUC).

    Examples:
      facerank pretrain corpus/ --out base/ --weights none --epochs 20
      facerank pretrain corpus/ --out base/ --weights none --resume
      facerank train photos/ --store faces/ --weights base/
    """
    from facerank.faces import face_step
    from facerank.pretrain import pretrain as run_pretraining, pretrain_recipe

    overrides = {k: v for k, v in dict(epochs=epochs, image_size=image_size, lr=lr,
                                       batch_size=batch_size, margin=margin).items()
                 if v is not None}
    config = pretrain_recipe(loss=loss, test_fraction=held_out, seed=seed, **overrides)

    def report(row: dict) -> None:
        if not as_json:
            score = (f"; unseen people's pairs {row['pair_accuracy']:.1%} (AUC "
                     f"{row['pair_auc']:.3f})" if "pair_auc" in row else "")
            typer.echo(f"epoch {row['epoch']}/{config.epochs}: loss {row['train_loss']:.3f}, "
                       f"train top-1 {row['train_accuracy']:.1%}{score} "
                       f"[{row['seconds']:.0f}s]")

    result = run_pretraining(corpus, out, config, weights=weights, min_photos=min_photos,
                             faces=face_step(faces, model_file=face_model), resume=resume,
                             show_progress=not as_json, on_epoch=report)
    if as_json:
        _emit_json({"out": str(out), **result.to_json()})
        return
    _report_skipped(result.skipped)
    from facerank.base import BaseConfig

    base = BaseConfig.from_json(result.base)
    _report_faces(result.no_face, result.several_faces, whole=base.faces.no_face == "whole")
    typer.echo(base.describe())
    typer.echo(f"base saved in {out} in {result.seconds:.0f}s; curves in {out / 'curves.png'}")
    typer.echo(f"next: facerank train PHOTOS/ --store faces/ --weights {out}")


# -- index ---------------------------------------------------------------------------------------

@index_app.command("build")
@handles_errors
def index_build(
    gallery: str = typer.Argument(..., help="One-folder-per-person gallery to index: a folder, "
                                  "or with --ray any URI Ray can read (s3://bucket/photos/)."),
    store: Optional[Path] = StoreOption,
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Embed and build the index on a Ray cluster: auto (the one on this "
        "machine, else a new local one), ray://HOST:PORT or HOST:PORT.", show_default=False),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="With --ray: embedding actors, one model each (default: "
        "as many as the cluster's CPUs, or GPUs with --gpus-per-worker, allow).",
        show_default=False),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", min=0,
                                          help="With --ray: GPUs per embedding actor."),
    memory: Optional[str] = typer.Option(
        None, "--memory", help="Memory budget of the index (512M, 4G, 1.5T); kept for later "
        "writes. The index kind is chosen within it, then its search parameters are tuned."),
    target_recall: Optional[float] = typer.Option(
        None, "--target-recall", help="Tune for the fastest search with this recall@10 against "
        "exact search (default 0.95 when tuning)."),
    target_latency: Optional[str] = typer.Option(
        None, "--target-latency", help="Tune for the most accurate search within this p50 "
        "latency (5ms, 500us)."),
    as_json: bool = JsonOption,
):
    """Embed every image of GALLERY into the store's index.

    Re-running embeds only new or changed files and drops deleted ones. With --memory or a
    target, the index is chosen within the budget and its search parameters tuned against
    exact search on 200 stored faces.

    Examples:
      facerank index build photos/ --store faces/ --memory 4G --target-recall 0.95
      facerank index build s3://bucket/photos/ --store faces/ --ray ray://head:10001 --workers 8
    """
    from facerank.store import FaceStore
    from facerank.units import parse_latency, parse_size

    tuning_asked = memory is not None or target_recall is not None or target_latency is not None
    if memory is not None:
        parse_size(memory)  # a badly written size fails before any work
    latency = parse_latency(target_latency) if target_latency is not None else None
    from facerank.sources import is_uri

    engine = None
    if ray is not None:
        from facerank.scale import RayEngine

        engine = RayEngine(address=ray, workers=workers, gpus_per_worker=gpus_per_worker)
    elif workers is not None or gpus_per_worker:
        raise typer.BadParameter("--workers and --gpus-per-worker size a Ray build: add --ray "
                                 "auto (or --ray ray://HOST:PORT)")
    elif is_uri(gallery):
        raise typer.BadParameter(f"{gallery} is a URI: read it on a Ray cluster with --ray auto "
                                 "(or copy it to a local folder)")
    opened = FaceStore.open(_store_path(store))
    report = opened.sync_folder(gallery, show_progress=not as_json, memory=memory, engine=engine)
    tuning = (opened.tune_index(target_recall=target_recall, target_latency_ms=latency)
              if tuning_asked else None)
    if as_json:
        _emit_json({**report.to_json(), "images": len(opened),
                    "index_factory": opened.info()["index_factory"],
                    "tuning": None if tuning is None else tuning.to_json()})
        return
    _print_change(report, opened, as_json)
    if tuning is not None:
        typer.echo(_describe_tuning(opened.info()["index_factory"], tuning.to_json()))


def _describe_tuning(factory: str, tuning: dict | None) -> str:
    if not tuning or not tuning.get("parameters"):
        return f"index {factory}: exact search (or still gathering vectors to train on), " \
               "nothing to tune"
    parameters = ", ".join(f"{name}={value}" for name, value in tuning["parameters"].items())
    targets = []
    if tuning.get("target_recall"):
        targets.append(f"recall@{tuning['k']} >= {tuning['target_recall']}")
    if tuning.get("target_latency_ms"):
        targets.append(f"p50 <= {tuning['target_latency_ms']:g} ms")
    return (f"index {factory}: tuned {parameters}: recall@{tuning['k']} {tuning['recall']:.3f}, "
            f"p50 {tuning['p50_ms']:.2f} ms over {tuning['queries']} stored faces against exact "
            f"search ({' and '.join(targets)}: {'met' if tuning['met'] else 'NOT met'})")


@index_app.command("plan")
@handles_errors
def index_plan(
    faces: int = typer.Option(..., "--faces", help="How many faces to plan for."),
    memory: str = typer.Option("2G", "--memory", help="Index memory per node (512M, 64G)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="Embedding size (default: the "
                                      "store's, else 2048).", show_default=False),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Model input size in "
                                             "px (default: the store's, else 64).",
                                             show_default=False),
    hours: Optional[float] = typer.Option(None, "--hours", help="Build within this many hours: "
                                          "how many embedding workers that takes."),
    store: Optional[Path] = typer.Option(None, "--store", "-s", help="Take --dim and "
                                         "--image-size from this store.", show_default=False),
    as_json: bool = JsonOption,
):
    """Plan a gallery this machine does not hold: index kind, shards, memory, expected recall
    and latency, embedding hours and nodes, from measured figures.

    Example:  facerank index plan --faces 100000000 --memory 64G --hours 24
    """
    from facerank.scale.plan import plan_scale
    from facerank.units import format_size, parse_size

    if store is not None:
        from facerank.config import read_config

        config = read_config(store)
        dim = dim or config.embedding_dim
        image_size = image_size or config.image_size
    plan = plan_scale(faces, memory_budget_bytes=parse_size(memory), dim=dim or 2048,
                      image_size=image_size or 64, hours=hours)
    if as_json:
        _emit_json(plan.to_json())
        return
    measured = plan.measured
    say = typer.echo
    say(f"{plan.faces:,} faces of {plan.dim}-d, at most {format_size(plan.memory_budget_bytes)} "
        "of index per node")
    say(f"  index      {plan.shards} shard(s) of {plan.faces_per_shard:,} faces, each "
        f"{plan.factory} (nprobe {plan.nprobe}" + (f", k_factor {plan.k_factor}"
                                                  if plan.k_factor else "") + ")")
    say(f"  memory     {format_size(plan.memory_per_shard_bytes)} per shard, "
        f"{format_size(plan.memory_total_bytes)} in all")
    say(f"  expected   recall@10 {plan.expected_recall:.3f}, p50 {plan.expected_p50_ms:g} ms per "
        f"shard (queries ask every shard at once)")
    say(f"  measured   {measured['faces']:,} faces, {measured['factory']}: recall@10 "
        f"{measured['recall_at_10']:.3f}, p50 {measured['p50_ms']:g} ms"
        + ("; extrapolated to the shard size (p50 scaled by the vectors a query scans)"
           if plan.extrapolated else ""))
    say(f"  embedding  {plan.embedding_hours:,.1f} h on one worker at "
        f"{plan.images_per_second_per_worker:g} images/s ({plan.image_size} px, measured end "
        f"to end on {plan.worker})")
    say(f"  index      train {plan.train_hours:g} h once, fill {plan.add_hours_per_shard:g} h per "
        "shard (shards in parallel; extrapolated)")
    goal = f" to finish within {plan.hours:g} h" if plan.hours else ""
    say(f"  nodes      {plan.nodes} ({plan.shards} holding shards, {plan.workers} embedding"
        f"{goal}): about {plan.build_hours:,.1f} h to build")
    say(f"  why        {plan.reason}")
    say(f"  figures    {plan.sources['index']}; {plan.sources['embedding']}")


@index_app.command("add")
@handles_errors
def index_add(
    images: List[Path] = typer.Argument(..., help="Image files to add."),
    person: str = typer.Option(..., "--person", "-p", help="Who they show (new or existing)."),
    store: Optional[Path] = StoreOption,
    as_json: bool = JsonOption,
):
    """Add images of one person to the index, without rebuilding it.

    Example:  facerank index add new/ada_1.jpg new/ada_2.jpg --person ada --store faces/
    """
    from facerank.store import FaceStore

    opened = FaceStore.open(_store_path(store))
    report = opened.add(images, person=person, show_progress=not as_json)
    _print_change(report, opened, as_json)


@index_app.command("remove")
@handles_errors
def index_remove(
    paths: Optional[List[Path]] = typer.Argument(None, help="Indexed image files to remove."),
    person: Optional[str] = typer.Option(None, "--person", "-p", help="Remove all of a person."),
    ids: Optional[List[int]] = typer.Option(None, "--id", help="Record id to remove (repeatable)."),
    store: Optional[Path] = StoreOption,
    as_json: bool = JsonOption,
):
    """Remove images (by path or id) or a whole person from the index.

    Example:  facerank index remove --person ada --store faces/
    """
    from facerank.store import FaceStore

    if not paths and person is None and not ids:
        raise ValueError("say what to remove: image paths, --person NAME or --id N")
    opened = FaceStore.open(_store_path(store))
    report = opened.remove(ids=ids or (), paths=paths or (), person=person)
    _print_change(report, opened, as_json)


@index_app.command("export")
@handles_errors
def index_export(
    out: Path = typer.Argument(..., help="The Parquet file to write."),
    store: Optional[Path] = StoreOption,
    as_json: bool = JsonOption,
):
    """Write every indexed face (id, path, person, sha256, vector) to one Parquet file, for
    another vector store or a data tool to load. The model's identity is in its metadata.

    Example:  facerank index export faces.parquet --store faces/
    """
    from facerank.store import FaceStore

    rows = FaceStore.open(_store_path(store)).export_parquet(out)
    if as_json:
        _emit_json({"path": str(out), "rows": rows})
    else:
        typer.echo(f"wrote {rows} faces to {out}")


@index_app.command("info")
@handles_errors
def index_info(store: Optional[Path] = StoreOption, as_json: bool = JsonOption):
    """Describe a store: model, preprocessing, index size, images per person.

    Example:  facerank index info --store faces/ --json
    """
    from facerank.store import FaceStore

    info = FaceStore.open(_store_path(store)).info()
    if as_json:
        _emit_json(info)
        return
    for key, value in info.items():
        if key not in ("images_per_person", "index_tuning"):
            typer.echo(f"{key:>22}: {value}")
    if info.get("index_tuning"):
        typer.echo(f"{'index_tuning':>22}: "
                   f"{_describe_tuning(info['index_factory'], info['index_tuning'])}")
    counts = info["images_per_person"]
    if counts:
        shown = ", ".join(f"{p} ({n})" for p, n in list(counts.items())[:10])
        typer.echo(f"{'people':>22}: {shown}{' ...' if len(counts) > 10 else ''}")


def _print_change(report, opened, as_json: bool) -> None:
    if as_json:
        _emit_json({**report.to_json(), "images": len(opened)})
        return
    _report_skipped(report.skipped)
    step = opened.model.config.faces
    _report_faces(report.no_face, report.several_faces, whole=step.no_face == "whole")
    typer.echo(f"added {report.added}, updated {report.updated}, removed {report.removed}, "
               f"unchanged {report.unchanged}, re-embedded {report.reembedded}; "
               f"the index holds {len(opened)} images")


# -- queries -------------------------------------------------------------------------------------

@app.command()
@handles_errors
def query(
    photos: List[Path] = typer.Argument(..., help="Photo(s) to look up."),
    store: Optional[Path] = StoreOption,
    k: int = typer.Option(5, "-k", help="How many closest gallery images."),
    top_k: int = typer.Option(5, help="How many people with probabilities."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Answer for every face in each "
                                   "photo (box, who, closest), not just the largest."),
    as_json: bool = JsonOption,
):
    """Who is it (top people with probabilities) and which gallery images are closest.

    The store's face step finds the face first; without --all-faces the largest face answers.
    Exit code 5 when a photo holds no face the store can use.

    Examples:
      facerank query photo.jpg --store faces/ -k 5
      facerank query group.jpg --store faces/ --all-faces --json
    """
    import facerank

    opened = facerank.open(_store_path(store))
    step = opened.model.config.faces
    results, faceless = [], []
    for photo in photos:
        answers = opened.identify(photo, k=k, top_k=top_k, every=all_faces)
        if not answers or (step.enabled and answers[0].face is None):
            faceless.append(str(photo))
        faces = [answer.to_json() for answer in answers]
        for face in faces:
            face["closest"] = face.pop("matches")  # the CLI's JSON has always said "closest"
        if all_faces:
            results.append({"photo": str(photo), "faces": faces, "threshold": opened.threshold})
        else:
            results.append({"photo": str(photo), "threshold": opened.threshold,
                            **(faces[0] if faces else {"face": None, "people": [],
                                                       "closest": [], "unknown": None})})
    if as_json:
        _emit_json(results if len(results) > 1 else results[0])
    else:
        for result in results:
            answers = result["faces"] if all_faces else ([result] if result["people"] else [])
            if not answers:
                typer.echo(f"{result['photo']}: no face found", err=True)
            for number, answer in enumerate(answers):
                title = result["photo"]
                if answer["face"]:
                    title += f" face {number + 1} at {tuple(answer['face']['box'])}"
                elif step.enabled:
                    typer.echo(f"{result['photo']}: no face found; answered for the whole image",
                               err=True)
                _print_people(title, answer["people"])
                _print_closest(title, answer["closest"])
                if answer["unknown"]:
                    typer.echo(f"unknown: the nearest gallery image is "
                               f"{answer['closest'][0]['distance']:.3f} away, beyond the "
                               f"calibrated threshold {result['threshold']:.3f}")
    if faceless:
        raise typer.Exit(NO_FACE_EXIT)


@app.command()
@handles_errors
def faces(
    photos: List[Path] = typer.Argument(..., help="Photo(s) to find faces in."),
    store: Optional[Path] = typer.Option(None, "--store", "-s", help="Use this store's face "
                                         "step (default: dlib's HOG detector)."),
    draw: Optional[Path] = typer.Option(None, help="Write the (first) photo with its boxes and "
                                        "landmarks drawn to this PNG."),
    as_json: bool = JsonOption,
):
    """Just the faces: each face's box, confidence and 5 landmarks, largest first.

    Exit code 5 when a photo holds no face.

    Examples:
      facerank faces group.jpg
      facerank faces group.jpg --json --draw boxes.png
    """
    from facerank.config import read_config
    from facerank.faces import FaceFinder, face_step
    from facerank.images import load_image

    step = read_config(store).faces if store is not None else face_step("dlib-hog")
    if not step.enabled:
        raise ValueError(f"the store {store} has no face step (it was trained with --faces none)")
    finder = FaceFinder(step, size=112)
    results = []
    for number, photo in enumerate(photos):
        image = load_image(photo)
        found = finder.find(image)
        results.append({"photo": str(photo), "width": image.width, "height": image.height,
                        "faces": [face.to_json() for face in found]})
        if draw is not None and number == 0:
            from facerank.drawing import draw_faces

            draw_faces(image, found).save(draw)
    if as_json:
        _emit_json(results if len(results) > 1 else results[0])
    else:
        for result in results:
            typer.echo(f"{result['photo']}: {len(result['faces'])} face(s)")
            for number, face in enumerate(result["faces"]):
                eyes = face["landmarks"]
                typer.echo(f"  {number + 1}. box {tuple(face['box'])} confidence "
                           f"{face['confidence']:.2f} eyes {tuple(eyes['left_eye_inner'])} "
                           f"{tuple(eyes['right_eye_inner'])}")
        if draw is not None:
            typer.echo(f"drawn: {draw}")
    if any(not result["faces"] for result in results):
        raise typer.Exit(NO_FACE_EXIT)


@app.command()
@handles_errors
def classify(
    photos: List[Path] = typer.Argument(..., help="Photo(s) to identify."),
    store: Optional[Path] = StoreOption,
    top_k: int = typer.Option(5, help="How many people with probabilities."),
    as_json: bool = JsonOption,
):
    """Who is it: the top people by the fine-tuned classifier, with probabilities.

    Example:  facerank classify photo.jpg --store faces/ --top-k 3 --json
    """
    import facerank

    opened = facerank.open(_store_path(store))
    results = [{"photo": str(photo), "people": [vars(p) for p in opened.classify(photo, top_k=top_k)]}
               for photo in photos]
    if as_json:
        _emit_json(results if len(results) > 1 else results[0])
        return
    for result in results:
        _print_people(result["photo"], result["people"])


def _print_people(photo: str, people: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=f"who is {photo}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("person")
    table.add_column("probability", justify="right")
    table.add_column("")
    for p in people:
        table.add_row(str(p["rank"] + 1), p["person"], f"{p['probability']:.1%}",
                      "█" * round(p["probability"] * 20))
    _console().print(table)


def _print_closest(photo: str, matches: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=f"closest gallery images to {photo}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("person")
    table.add_column("distance", justify="right")
    table.add_column("path", overflow="fold")
    for m in matches:
        table.add_row(str(m["rank"] + 1), m["person"], f"{m['distance']:.4f}", m["path"])
    _console().print(table)


@app.command()
@handles_errors
def verify(
    photo_a: Path = typer.Argument(..., help="First photo."),
    photo_b: Path = typer.Argument(..., help="Second photo."),
    store: Optional[Path] = StoreOption,
    as_json: bool = JsonOption,
):
    """Same person or not: the distance between two face prints and the threshold used.

    Exit code 0 for the same person, 4 for different people (and 0 when no threshold has been
    calibrated yet: run `facerank calibrate` first).

    Example:  facerank verify a.jpg b.jpg --store faces/
    """
    import facerank

    opened = facerank.open(_store_path(store))
    verdict = opened.verify(photo_a, photo_b)
    distance, threshold, same = verdict.distance, verdict.threshold, verdict.same
    if as_json:
        _emit_json(vars(verdict))
    elif same is None:
        typer.echo(f"distance {distance:.4f}; no threshold calibrated (run `facerank calibrate "
                   f"--store {opened.folder}`)")
    else:
        typer.echo(f"{'same person' if same else 'different people'}: distance {distance:.4f} "
                   f"{'<=' if same else '>'} threshold {threshold:.4f}")
    if same is False:
        raise typer.Exit(4)


@app.command()
@handles_errors
def calibrate(
    store: Optional[Path] = StoreOption,
    far: float = typer.Option(0.01, help="False-accept rate to calibrate at (0.01 = 1%)."),
    as_json: bool = JsonOption,
):
    """Calibrate the same-person threshold on held-out images at a chosen false-accept rate.

    Afterwards `verify` decides, and `query` answers "unknown" beyond the threshold.

    Example:  facerank calibrate --store faces/ --far 0.01
    """
    import facerank
    from facerank.calibrate import calibrate as run_calibration

    result = run_calibration(facerank.open(_store_path(store)), far=far)
    if as_json:
        _emit_json(result.to_json())
        return
    typer.echo(f"threshold {result.threshold:.4f} at false-accept rate {result.measured_far:.2%} "
               f"(asked {far:.2%}); accepts {result.tar:.1%} of same-person pairs "
               f"({result.same_pairs} same, {result.different_pairs} different pairs from the "
               f"{result.source})")


@app.command()
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
    from facerank.config import read_config
    from facerank.precision import set_precision

    folder = _store_path(store)
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
        _emit_json({"precision": config.precision, "changed": changed,
                    "file": config.int8_file if config.precision == "int8" else config.onnx_file})
        return
    typer.echo(f"precision {config.precision}" + (f" (was {before})" if changed else ""))
    if changed:
        typer.echo("next: `facerank index build GALLERY` re-embeds the gallery, then "
                   "`facerank calibrate` sets the unknown-face threshold again", err=True)


# -- evaluate ------------------------------------------------------------------------------------

@app.command()
@handles_errors
def evaluate(
    gallery: Optional[Path] = typer.Argument(None, help="Test gallery (default: the held-out "
                                             "split saved by train)."),
    store: Optional[Path] = StoreOption,
    plot: Optional[Path] = typer.Option(None, help="Confusion-matrix PNG (default: "
                                        "STORE/train/confusion.png)."),
    pairs: Optional[Path] = typer.Option(None, help="Verification instead: an LFW-format pairs "
                                         "file to score (needs --images)."),
    threshold_pairs: Optional[Path] = typer.Option(
        None, help="With --pairs: the pairs the threshold is chosen on (LFW's pairsDevTrain.txt)"
        "; default: the store's calibrated threshold."),
    images: Optional[Path] = typer.Option(None, help="With --pairs: the folder holding "
                                          "NAME/NAME_0001.jpg."),
    flip: bool = typer.Option(False, "--flip", help="Answer each image as the mean of itself and "
                              "its mirror image (test-time augmentation, twice the work)."),
    as_json: bool = JsonOption,
):
    """Accuracy, macro precision/recall/F1 and a confusion matrix on held-out images; or, with
    --pairs, 1:1 verification: accuracy, ROC AUC and true accepts at 1% false accepts.

    Examples:
      facerank evaluate --store faces/ --plot confusion.png
      facerank evaluate --store faces/ --pairs lfw/pairsDevTest.txt \
          --threshold-pairs lfw/pairsDevTrain.txt --images lfw/images
    """
    from facerank.evaluate import evaluate as run_evaluation

    folder = _store_path(store)
    if pairs is not None:
        return _evaluate_pairs(folder, pairs, threshold_pairs, images, flip, plot, as_json)
    from facerank.gallery import TRAIN_FOLDER

    plot = plot or folder / TRAIN_FOLDER / "confusion.png"
    result = run_evaluation(folder, gallery, confusion_png=plot, flip=flip)
    if as_json:
        _emit_json({**result.to_json(), "confusion_png": str(plot)})
        return
    _report_skipped(result.skipped)
    typer.echo(f"{result.images} held-out images of {result.people} people")
    typer.echo(f"  classifier: accuracy {result.accuracy:.1%}, top-5 {result.top5_accuracy:.1%}, "
               f"precision {result.precision:.1%}, recall {result.recall:.1%}, F1 {result.f1:.1%}")
    if result.nearest_neighbour_accuracy is not None:
        typer.echo(f"  1-nearest-neighbour over training images: "
                   f"{result.nearest_neighbour_accuracy:.1%}")
    if result.unknown_people:
        typer.echo(f"  not scored (unknown to the classifier): {', '.join(result.unknown_people)}")
    typer.echo(f"confusion matrix: {plot}")


def _evaluate_pairs(folder: Path, pairs_file: Path, threshold_file: Optional[Path],
                    images: Optional[Path], flip: bool, plot: Optional[Path], as_json: bool):
    from facerank.store import FaceStore
    import numpy as np

    from facerank.verification import (distances, plot_distance_histogram, plot_roc, read_pairs,
                                       score_at, score_pairs)

    if images is None:
        raise typer.BadParameter("--pairs needs --images, the folder of NAME/NAME_0001.jpg")
    store = FaceStore.open(folder)

    def embed(paths):
        vectors = store.embed(list(paths))
        if flip:
            from PIL import ImageOps

            from facerank.images import load_image

            mirrored = store.embed([ImageOps.mirror(load_image(p)) for p in paths])
            vectors = (vectors + mirrored) / 2
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors
    test = read_pairs(pairs_file, images)
    d_test = distances(embed, test)
    if threshold_file is not None:
        chosen_on = read_pairs(threshold_file, images)
        score = score_pairs(distances(embed, chosen_on), chosen_on.same, d_test, test.same)
    elif store.threshold is not None:
        score = score_at(store.threshold, d_test, test.same)
    else:
        raise typer.BadParameter("no threshold: pass --threshold-pairs, or run `facerank "
                                 "calibrate` first")
    from facerank.gallery import TRAIN_FOLDER

    plot = plot or folder / TRAIN_FOLDER / "pairs.png"
    plot_roc({"facerank": (d_test, test.same)}, plot.with_name(plot.stem + "-roc.png"))
    plot_distance_histogram(d_test, test.same, plot, threshold=score.threshold)
    if as_json:
        _emit_json({**score.to_json(), "histogram_png": str(plot)})
        return
    typer.echo(f"{score.pairs} pairs: accuracy {score.accuracy:.1%} at distance threshold "
               f"{score.threshold:.3f}, ROC AUC {score.auc:.3f}, "
               f"true accepts at {score.far:.0%} false accepts {score.tar_at_far:.1%}")
    typer.echo(f"distance histogram: {plot}; ROC: {plot.with_name(plot.stem + '-roc.png')}")


# -- doctor --------------------------------------------------------------------------------------

@app.command()
@handles_errors
def doctor(
    gallery: Path = typer.Argument(..., help="Gallery folder to check."),
    store: Optional[Path] = typer.Option(None, "--store", "-s", help="A trained store: also "
                                         "flag images whose nearest neighbours are all of "
                                         "another person."),
    as_json: bool = JsonOption,
):
    """Check a gallery: unreadable files, duplicates, likely mislabels, too few images, odd sizes.

    Exit code 0 when nothing was found, 3 when there are findings.

    Example:  facerank doctor photos/ --store faces/
    """
    from facerank.doctor import diagnose
    from facerank.store import FaceStore

    opened = FaceStore.open(store) if store is not None else None
    report = diagnose(gallery, store=opened)
    if as_json:
        _emit_json(report.to_json())
    else:
        typer.echo(f"{report.gallery}: {report.images} images of {report.people} people; "
                   f"{report.faces}")
        _report_faces(report.no_face, report.several_faces,
                      whole=opened is None or opened.model.config.faces.no_face == "whole")
        for finding in report.findings:
            typer.echo(f"  [{finding.kind}] {' <-> '.join(finding.paths)}: {finding.detail}")
        summary = report.to_json()["summary"]
        typer.echo("no problems found" if not summary else
                   "found: " + ", ".join(f"{n} {kind}" for kind, n in sorted(summary.items())))
    if report.findings:
        raise typer.Exit(3)


# -- serve ---------------------------------------------------------------------------------------

@app.command()
@handles_errors
def serve(
    stores: Optional[List[Path]] = typer.Option(None, "--store", "-s", help="Store to serve "
                                                "(repeat for several; the page lets users pick)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes it to the "
                             "network, which needs --token (or --insecure-no-token)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    token: Optional[str] = typer.Option(None, envvar="FACERANK_TOKEN", help="Bearer token "
                                        "required by endpoints that change a store."),
    read_token: Optional[str] = typer.Option(None, envvar="FACERANK_READ_TOKEN", help="Bearer "
                                             "token (or --token) also required to list stores, "
                                             "see thumbnails and query; the page takes it as "
                                             "http://HOST:PORT/#token=READ_TOKEN."),
    insecure_no_token: bool = typer.Option(False, "--insecure-no-token", help="Serve beyond "
                                           "loopback with no token: anyone who reaches the "
                                           "address may enrol and remove people."),
    max_upload_mb: float = typer.Option(10.0, help="Largest accepted photo, in MB."),
    max_concurrent: Optional[int] = typer.Option(None, help="Model or store calls run at once "
                                                 "(default 1: each uses every core); more wait their "
                                                 "turn.", show_default=False),
):
    """Serve the web page and REST API (docs at /docs) for one or more stores.

    Needs the serve extra: pip install -e ".[serve]".

    Example:  facerank serve --store faces/ --port 8000
    """
    # Checked before anything loads: a refusal should come at once, not after the model.
    if not token and not _is_loopback(host):
        if not insecure_no_token:
            typer.echo(f"error: refusing to serve on {host} without a token: anyone who can "
                       "reach it could enrol and remove people. Add --token SECRET (and "
                       "--read-token to guard the answers too), or --insecure-no-token to serve "
                       "it open anyway", err=True)
            raise typer.Exit(2)
        typer.echo(f"warning: serving on {host} without a token (--insecure-no-token): anyone "
                   "who can reach it can enrol and remove people", err=True)
    try:
        import uvicorn

        from facerank.serve import create_app
    except ImportError as error:
        raise FacerankError(f"serving needs the 'serve' extra ({error.name} is missing): "
                            "pip install -e \".[serve]\"") from None
    folders = stores or [_store_path(None)]
    application = create_app(folders, token=token, read_token=read_token,
                             max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                             max_concurrent=max_concurrent)
    typer.echo(f"serving {', '.join(str(f) for f in folders)} on http://{host}:{port}/", err=True)
    uvicorn.run(application, host=host, port=port, log_level="warning")


def _is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (a name other than localhost may resolve
    to anything, so it counts as open)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- demo ----------------------------------------------------------------------------------------

@app.command()
@handles_errors
def demo(
    gallery: Optional[Path] = typer.Option(None, help="Gallery to demo on (default: the bundled "
                                           "ORL subset).", show_default=False),
    store: Path = typer.Option(Path("facerank-demo"), "--store", "-s", help="Store to create."),
    weights: str = typer.Option("none", help="none (default: works offline), imagenet, or a path."),
    epochs: int = typer.Option(30, help="Training epochs."),
    image_size: int = typer.Option(64, help="Input size in pixels."),
    as_json: bool = JsonOption,
):
    """Train on a small gallery, index its training split, and identify a held-out photo.

    Example:  facerank demo
    """
    from facerank.evaluate import evaluate as run_evaluation
    from facerank.store import FaceStore
    from facerank.train import preset as make_preset, train as run_training

    from facerank.gallery import demo_gallery, read_split

    gallery = gallery or demo_gallery()
    if not gallery.is_dir():
        raise FacerankError(f"demo gallery {gallery} not found; pass --gallery FOLDER (one "
                            "sub-folder of images per person)")
    name = "scratch" if weights == "none" else "sgd"
    config = make_preset(name, epochs=epochs, image_size=image_size)
    say = (lambda *_: None) if as_json else typer.echo
    say(f"1/4 training '{name}' preset on {gallery} ({epochs} epochs at {image_size} px, "
        f"weights: {weights}) ...")
    trained = run_training(gallery, store, config, weights=weights, show_progress=not as_json)
    split = read_split(store)
    say(f"2/4 indexing the {len(split.train)} training images ...")
    opened = FaceStore.open(store)
    say(opened.model.config.faces.describe())
    paths, people = zip(*split.train)
    opened.add(paths, person=people)
    # The first held-out photo in which a face is found (ORL's s1/2.pgm, the very first, has
    # none that dlib can see, and a whole frame is not what a face model should be shown).
    photo, truth = next((item for item in split.test if opened.find_faces(item[0])),
                        split.test[0])
    say(f"3/4 asking about {photo}, a photo of {truth} that training never saw:")
    matches, predictions = opened.query(photo, k=3, top_k=5)
    evaluation = run_evaluation(opened)
    if as_json:
        _emit_json({"photo": photo, "truth": truth, "people": [vars(p) for p in predictions],
                    "closest": [vars(m) for m in matches], "train": trained.to_json(),
                    "evaluation": evaluation.to_json()})
        return
    _print_people(photo, [vars(p) for p in predictions])
    _print_closest(photo, [vars(m) for m in matches])
    verdict = "right" if predictions[0].person == truth else "wrong"
    say(f"the answer is {verdict}: {predictions[0].person} (truth: {truth})")
    say(f"4/4 held-out accuracy over {evaluation.images} unseen photos: classifier "
        f"{evaluation.accuracy:.1%}, nearest neighbour {evaluation.nearest_neighbour_accuracy:.1%} "
        f"(from {'random initialisation' if weights == 'none' else weights} weights)")
    say(f"store left in {store}; try: facerank query {photo} --store {store}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
