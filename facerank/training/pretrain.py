"""Pretraining a face prior: the backbone learns from many people's faces, then is saved as a base.

A ResNet50 fine-tuned on a few hundred photos of a few dozen people has never learnt what tells
faces apart. Face models (FaceNet, ArcFace, dlib's) learn it from thousands of identities with a
margin loss; ``pretrain`` does the same on a face corpus laid out one folder per person, and saves
the backbone without its head as a *base* (``facerank.model.base``) that ``train(weights=BASE)``
fine-tunes on a user's own people.

The recipe (``PRETRAIN``): aligned faces through the face step, a CosFace head (margin
``PRETRAIN_MARGINS["cosface"]``, 0.35; scale 30) over every identity with at least ``min_photos`` photos, drawn evenly over people
(class-balanced), flips, shifts, zoom, brightness/contrast and greyscale, AdamW with a one-cycle
schedule, bf16 autocast where the CPU has AMX. A share of the people (``test_fraction``, at least
two) never trains: each epoch, pairs of their photos score how well the face prints tell
*unseen* people apart (ROC AUC and accuracy at the best threshold on those pairs).

>>> result = pretrain("corpus/", "base/", pretrain_recipe(epochs=20), weights="none")
>>> result.history[-1]["pair_auc"]
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from facerank import atomic
from facerank.model.base import BaseConfig, save_base
from facerank.errors import GalleryError, UsageError
from facerank.faces.cache import DetectionCache
from facerank.faces.detection import FaceFinder, FaceStep, face_step
from facerank.data.gallery import GalleryImage, scan_gallery
from facerank.model.torch_model import FaceModel
from facerank.model.network import features_and_logits, load_backbone_weights
from facerank.progress import Progress
from facerank.training.augmentation import FaceCounts, decode_images
from facerank.training.loop import (CHECKPOINT_FILE, CURVES_FILE, HISTORY_FILE, bf16_is_native,
                                    epoch_order, make_optimizer, make_schedule, parameter_groups,
                                    restore_checkpoint, save_checkpoint, set_trainable,
                                    train_epoch, training_device)
from facerank.training.memory import malloc_keeps_freed_memory
from facerank.training.plots import plot_history
# pretrain_recipe lives with the other recipes (torch-free, for the CLI's help); imported here
# too, as the recipe this module's pretrain() takes.
from facerank.training.recipes import (PRETRAIN, PRETRAIN_MARGINS,  # noqa: F401
                                       PRETRAIN_MIN_PHOTOS, TrainConfig, pretrain_recipe)
from facerank.quality.verification import best_threshold

PAIRS_PER_PERSON = 10       # same-person pairs drawn per held-out person, at most


@dataclass
class PretrainResult:
    base: dict                       # the saved base's config (BaseConfig.to_json)
    history: list[dict]              # per epoch: loss, accuracy, held-out pair scores, seconds
    people: int                      # identities trained on
    images: int                      # photos trained on
    held_out_people: list[str]       # never trained on; their pairs score each epoch
    pairs: int                       # held-out pairs scored each epoch
    dropped_people: int              # with fewer than min_photos photos
    skipped: list[tuple[str, str]]   # (file, reason) for photos that could not be used
    no_face: list[str]
    several_faces: list[str]
    seconds: float
    bf16: bool
    history_path: str | None = None  # out/HISTORY_FILE
    curves_path: str | None = None   # out/CURVES_FILE
    min_photos: int = PRETRAIN_MIN_PHOTOS  # people with fewer photos were left out

    def to_json(self) -> dict:
        return asdict(self)


def pretrain(corpus: str | Path, out: str | Path, config: TrainConfig | None = None, *,
             weights: str = "imagenet", faces: FaceStep | str = "auto",
             min_photos: int = PRETRAIN_MIN_PHOTOS,
             resume: bool = False, show_progress: bool = False, checkpoint_every: float = 60.0,
             device: str = "cpu", on_epoch: Callable[[dict], None] | None = None
             ) -> PretrainResult:
    """Pretrain the backbone on ``corpus`` (one folder per person) and save a base in ``out``.

    ``out`` receives the base (``base.json`` + weights), ``history.json``, ``curves.png``, the
    ``checkpoint.pt`` an interrupted run resumes from (``resume=True``) and the detection cache.
    ``weights``: what to start from, as for ``train`` (``"imagenet"``, ``"none"``, a file, or
    another base to continue). ``device``: ``"cpu"`` or ``"cuda"`` (a GPU, with bf16 autocast
    where it has native bf16; faces are found and augmented on the CPU either way).
    ``on_epoch`` receives each epoch's history row as it ends.
    """
    config = config or PRETRAIN
    if config.loss == "softmax":
        raise UsageError(f"pretraining needs a margin loss: {' or '.join(PRETRAIN_MARGINS)}; "
                         f"got {config.loss!r}")
    started = time.perf_counter()
    target = training_device(device)  # before any work: a missing GPU fails at once
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    backbone_state, weights_origin = load_backbone_weights(weights)
    step = faces if isinstance(faces, FaceStep) else face_step(faces)
    finder = FaceFinder(step, size=config.image_size,
                        cache=DetectionCache(out / "faces.sqlite") if step.enabled else None)

    by_person: dict[str, list[GalleryImage]] = defaultdict(list)
    for item in scan_gallery(corpus).images:
        by_person[item.person].append(item)
    kept = {person: items for person, items in by_person.items() if len(items) >= min_photos}
    held_out = _held_out_people(by_person, config)
    training = sorted(person for person in kept if person not in held_out)
    if len(training) < 2:
        raise GalleryError(f"{corpus}: pretraining needs at least two people with {min_photos} "
                           f"or more photos; found {len(training)}")
    held_out_items = [item for person in sorted(held_out)
                      for item in by_person[person][:PAIRS_PER_PERSON + 1]]

    progress = Progress(show_progress)
    counts = FaceCounts([], [])
    train_list = [item for person in training for item in kept[person]]
    with progress:
        task = progress.add("finding faces" if step.enabled else "decoding",
                            len(train_list) + len(held_out_items))
        train_items, train_pixels, skipped = decode_images(
            train_list, config.image_size, lambda: progress.advance(task), crop=config.crop,
            finder=finder, counts=counts)
        pair_items, pair_pixels, skipped_pairs = decode_images(
            held_out_items, config.image_size, lambda: progress.advance(task), crop=config.crop,
            finder=finder, counts=counts)
    skipped += skipped_pairs
    people = sorted({item.person for item in train_items})
    if len(people) < 2:
        raise GalleryError(f"{corpus}: pretraining needs at least two people with usable photos; "
                           f"{len(people)} left after {len(skipped)} photos were skipped")
    label_of = {person: i for i, person in enumerate(people)}
    labels = torch.tensor([label_of[item.person] for item in train_items])
    pairs = held_out_pairs([item.person for item in pair_items], seed=config.seed)

    model = FaceModel.from_backbone(people, backbone_state, weights_origin,
                                    image_size=config.image_size, crop=config.crop,
                                    head="cosine", head_scale=config.scale, faces=step)
    network = model.network.to(target, memory_format=torch.channels_last)
    model.device = target
    set_trainable(network, config.trainable)
    optimizer = make_optimizer(parameter_groups(network, config), config)
    steps_per_epoch = -(-len(train_items) // config.batch_size)
    schedule = make_schedule(optimizer, config, steps_per_epoch)
    use_bf16 = bf16_is_native(target) if config.bf16 is None else config.bf16
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    history: list[dict] = []
    first_epoch = 1
    checkpoint_path = out / CHECKPOINT_FILE
    meta = json.dumps({"people": people, "config": asdict(config), "faces": step.to_json(),
                       "weights_origin": weights_origin, "held_out": sorted(held_out)})
    if resume and checkpoint_path.exists():
        checkpoint = restore_checkpoint(checkpoint_path, meta, network, optimizer, schedule,
                                        command="pretrain")
        history = json.loads(checkpoint["history"])
        first_epoch = int(checkpoint["epoch"]) + 1
    shuffle = torch.Generator().manual_seed(config.seed)
    for _ in range(first_epoch - 1):  # replay the shuffles of finished epochs
        epoch_order(labels, config.balanced, shuffle)

    with malloc_keeps_freed_memory(), progress:
        last_checkpoint = time.perf_counter()
        task = progress.add("pretraining", (config.epochs - first_epoch + 1) * steps_per_epoch)
        for epoch in range(first_epoch, config.epochs + 1):
            epoch_started = time.perf_counter()
            order = epoch_order(labels, config.balanced, shuffle)
            loss, accuracy = train_epoch(model, train_pixels, labels, order, config, optimizer,
                                         schedule, loss_fn, epoch=epoch, use_bf16=use_bf16,
                                         on_step=lambda: progress.advance(task))
            row = {"epoch": epoch, "train_loss": loss, "train_accuracy": accuracy,
                   "lr": optimizer.param_groups[-1]["lr"]}
            if pairs[2].any() and (~pairs[2]).any():  # both kinds, or no score means anything
                row.update(score_held_out(model, pair_pixels, pairs, use_bf16=use_bf16))
                row["val_accuracy"] = row["pair_accuracy"]  # the curves' held-out line
            row["seconds"] = round(time.perf_counter() - epoch_started, 3)
            history.append(row)
            if epoch == config.epochs or time.perf_counter() - last_checkpoint > checkpoint_every:
                save_checkpoint(checkpoint_path, {
                    "model": network.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "rng": torch.get_rng_state(),
                    "epoch": epoch, "history": json.dumps(history), "meta": meta})
                last_checkpoint = time.perf_counter()
            progress.describe(task, f"epoch {epoch}/{config.epochs} loss {loss:.3f}"
                              + (f" unseen pairs {row['pair_accuracy']:.1%}"
                                 if "pair_accuracy" in row else ""))
            if on_epoch:
                on_epoch(row)

    last = history[-1] if history else {}
    network.to("cpu")  # saved as CPU tensors, where fine-tuning and queries load it
    model.device = torch.device("cpu")
    base = save_base(network.state_dict(), BaseConfig(
        image_size=config.image_size, faces=step, crop=config.crop, mean=model.config.mean,
        std=model.config.std, weights_origin=weights_origin, loss=config.loss,
        margin=config.margin, people=len(people), images=len(train_items),
        epochs=config.epochs,
        verification={"accuracy": last["pair_accuracy"], "auc": last["pair_auc"],
                      "pairs": last["pairs"]} if "pair_auc" in last else {}), out)
    checkpoint_path.unlink(missing_ok=True)  # ~280 MB; the base is what it was kept for
    result = PretrainResult(
        base=base.to_json(), history=history, people=len(people), images=len(train_items),
        min_photos=min_photos, held_out_people=sorted(held_out), pairs=len(pairs[0]),
        dropped_people=len(by_person) - len(kept), skipped=skipped, no_face=counts.no_face,
        several_faces=counts.several_faces, seconds=round(time.perf_counter() - started, 2),
        bf16=use_bf16, history_path=str(out / HISTORY_FILE), curves_path=str(out / CURVES_FILE))
    atomic.write_json(out / HISTORY_FILE, {"config": asdict(config), **result.to_json()})
    plot_history(history, out / CURVES_FILE, held_out_label="unseen people's pairs")
    return result


def _held_out_people(by_person: dict[str, list], config: TrainConfig) -> set[str]:
    """``test_fraction`` of the people with two or more photos (at least two people when any
    are asked for), drawn with the seed: they score each epoch and never train."""
    eligible = sorted(person for person, items in by_person.items() if len(items) >= 2)
    if config.test_fraction <= 0 or len(eligible) < 4:
        return set()
    count = max(2, round(config.test_fraction * len(eligible)))
    return set(random.Random(config.seed).sample(eligible, min(count, len(eligible) // 2)))


def held_out_pairs(people: list[str], *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, same): every same-person pair of photos (``PAIRS_PER_PERSON`` at most per
    person) and as many pairs of different people, as indexes into ``people``."""
    rng = random.Random(seed)
    by_person: dict[str, list[int]] = defaultdict(list)
    for i, person in enumerate(people):
        by_person[person].append(i)
    same = []
    for indexes in by_person.values():
        combos = list(itertools.combinations(indexes, 2))
        same += rng.sample(combos, min(PAIRS_PER_PERSON, len(combos)))
    different = []
    if len(by_person) >= 2:
        while len(different) < len(same):
            i, j = rng.randrange(len(people)), rng.randrange(len(people))
            if people[i] != people[j]:
                different.append((i, j))
    pairs = same + different
    left = np.array([i for i, _ in pairs], dtype=np.int64)
    right = np.array([j for _, j in pairs], dtype=np.int64)
    return left, right, np.array([True] * len(same) + [False] * len(different))


def score_held_out(model: FaceModel, pixels: torch.Tensor,
                   pairs: tuple[np.ndarray, np.ndarray, np.ndarray], *, use_bf16: bool,
                   batch_size: int = 64) -> dict:
    """ROC AUC and best-threshold accuracy of the face prints on the held-out pairs. The
    threshold is chosen on the same pairs, so the accuracy is a progress signal, not a test."""
    from sklearn.metrics import roc_auc_score

    model.network.eval()
    vectors = []
    with torch.inference_mode(), torch.autocast(model.device.type, dtype=torch.bfloat16,
                                                enabled=use_bf16):
        for start in range(0, len(pixels), batch_size):
            features, _ = features_and_logits(model.network,
                                              model.normalise(pixels[start:start + batch_size]))
            vectors.append(nn.functional.normalize(features.float(), dim=1))
    vectors = torch.cat(vectors).cpu().numpy()
    left, right, same = pairs
    distances = np.linalg.norm(vectors[left] - vectors[right], axis=1)
    _, accuracy = best_threshold(distances, same)
    return {"pair_accuracy": accuracy, "pair_auc": float(roc_auc_score(same, -distances)),
            "pairs": int(len(same))}
