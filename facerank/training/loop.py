"""Fine-tuning recipes (presets), the training loop, checkpoints and per-epoch history.

Four presets. Two are the method's, and assume ImageNet weights:

* ``sgd``    — SGD, momentum 0.9, lr 0.01, batch 10, 6 epochs, every layer trainable;
* ``freeze`` — Adam lr 1e-4, batch 10, 6 epochs, all frozen but the last residual stage + head.

The third, ``scratch``, is for random initialisation (no ImageNet weights to be had): 64 px,
batch 32, 40 epochs, AdamW with a one-cycle schedule and bf16 autocast where the CPU has AMX.

The fourth, ``finetune``, is for a face prior made by ``facerank pretrain`` (a *base*): a
CosFace head at lr 2e-3, the backbone at a tenth of that, 15 epochs at the base's input size.
``recipe(weights)`` picks it whenever the weights are a base, as ``scratch`` for ``none``.

With ``trainable="last_stage"`` (the ``freeze`` preset) ``cached_features=True`` runs the frozen
stem..layer3 once per image and augmented view instead of once per image per epoch, and trains
layer4 + head on those stored outputs (see ``TrainConfig.feature_views``).

>>> config = preset("scratch", epochs=40)
>>> result = train("gallery/", "faces/", config, weights="none")
>>> result.history[-1]["val_accuracy"]
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from facerank import atomic
from facerank.folder_lock import FolderLock
from facerank.model.base import base_folder, differences, read_base_config
from facerank.errors import GalleryError, ImageError, StoreMismatchError
from facerank.faces.cache import DetectionCache, read_file_input
from facerank.faces.detection import FaceFinder, FaceStep, face_step
from facerank.data.gallery import (TRAIN_FOLDER, GalleryImage, scan_gallery, split_gallery,  # noqa: F401
                              write_split)
from facerank.model.torch_model import FaceModel
from facerank.model.network import features_and_logits, load_backbone_weights
from facerank.model.config import resize_for_model
from facerank.progress import Progress

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "onecycle")
TRAINABLE = ("all", "last_stage")
LOSSES = ("softmax", "cosface", "arcface")  # the last two train a cosine head with a margin
KEEP = ("last", "best")         # which epoch's weights are saved


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe. Use ``preset(name, **overrides)`` rather than building one by hand."""

    preset: str = "custom"
    optimizer: str = "sgd"          # one of OPTIMIZERS
    lr: float = 0.01                # peak learning rate under "onecycle"
    momentum: float = 0.9           # SGD only
    weight_decay: float = 0.0
    batch_size: int = 10
    epochs: int = 6
    schedule: str = "constant"      # one of SCHEDULES
    trainable: str = "all"          # "last_stage": layer4 + head train, the rest is frozen
    image_size: int = 224           # stored with the model; queries are resized the same way
    crop: float = 1.0               # centred share of each image kept before resizing (stored too)
    loss: str = "softmax"           # one of LOSSES
    margin: float = 0.0             # cosface: subtracted from the true person's cosine;
                                    # arcface: added to the angle (radians)
    scale: float = 30.0             # cosface/arcface: the cosine head's logit scale
    label_smoothing: float = 0.0
    balanced: bool = False          # draw each epoch's images evenly over people, not over images
    flip: bool = True               # random horizontal flip
    shift: float = 0.1              # random shift, as a fraction of the image side
    shear: float = 0.0              # random shear, degrees (0 = off)
    zoom: float = 0.0               # random zoom, ± fraction (0 = off)
    greyscale: float = 0.0          # probability of turning an image grey (ORL-like photos)
    colour: float = 0.0             # random brightness and contrast, ± fraction (0 = off)
    backbone_lr: float = 1.0        # the backbone's learning rate as a share of ``lr`` (the
                                    # head's): below 1 a pretrained face prior moves less than
                                    # the new head (see ``finetune``)
    bf16: bool | None = None        # bf16 autocast; None = where the CPU has native bf16 (AMX)
    test_fraction: float = 0.3      # stratified per person
    seed: int = 0
    # "last" saves the final epoch. "best" saves the epoch with the best held-out accuracy: the
    # held-out split then chose the model, so its accuracy on that split is optimistic (a
    # measured 0.5 points on ORL). Use "best" only when the held-out split is a validation set
    # whose figure you do not report as the model's accuracy.
    keep: str = "last"
    # trainable="last_stage" only: compute the frozen stem..layer3 outputs once and train layer4 +
    # head on them. Augmentation comes before the frozen part, so it is drawn once too:
    # ``feature_views`` augmented copies of each training image, epoch e using copy
    # (e - 1) mod feature_views. With feature_views >= epochs no view repeats (as uncached
    # training, with other random draws); fewer views cost less up front but repeat. The cache
    # holds views x images x 1024 x (image_size/16)^2 floats (112 px: 200 KB a view).
    cached_features: bool = False
    feature_views: int = 2

    def __post_init__(self):
        for name, value, choices in (("optimizer", self.optimizer, OPTIMIZERS),
                                     ("schedule", self.schedule, SCHEDULES),
                                     ("trainable", self.trainable, TRAINABLE),
                                     ("loss", self.loss, LOSSES),
                                     ("keep", self.keep, KEEP)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.image_size < 32:
            raise ValueError("epochs and batch_size must be >= 1 and image_size >= 32")
        if self.cached_features and self.trainable != "last_stage":
            raise ValueError("cached_features needs trainable='last_stage' (the freeze preset): "
                             "with every layer training, the features change at every step and "
                             "cannot be cached")
        if not 0.1 <= self.crop <= 1.0:
            raise ValueError(f"crop must be between 0.1 and 1 (a share of the image); got {self.crop}")
        if self.feature_views < 1:
            raise ValueError(f"feature_views must be >= 1; got {self.feature_views}")
        if not 0.0 < self.backbone_lr <= 1.0:
            raise ValueError(f"backbone_lr must be in (0, 1] (a share of lr); got {self.backbone_lr}")


PRESETS: dict[str, TrainConfig] = {
    "sgd": TrainConfig(preset="sgd", optimizer="sgd", lr=0.01, momentum=0.9, batch_size=10,
                       epochs=6, trainable="all", bf16=False),
    "freeze": TrainConfig(preset="freeze", optimizer="adam", lr=1e-4, batch_size=10, epochs=6,
                          trainable="last_stage", bf16=False),
    "scratch": TrainConfig(preset="scratch", optimizer="adamw", lr=2e-3, weight_decay=0.05,
                           batch_size=32, epochs=40, schedule="onecycle", image_size=64,
                           label_smoothing=0.1),
    # From a facerank base (``facerank pretrain``): the new head learns at lr, the pretrained
    # backbone at a tenth of it, so a few hundred photos adjust the face prior without
    # overwriting it; a CosFace head like the base's own. The image size is the base's.
    "finetune": TrainConfig(preset="finetune", optimizer="adamw", lr=2e-3, weight_decay=0.05,
                            batch_size=32, epochs=15, schedule="onecycle", image_size=64,
                            loss="cosface", margin=0.2, backbone_lr=0.1, zoom=0.1),
}


MARGIN = 0.2  # a CosFace/ArcFace head's margin when a recipe asks for the loss but not a margin


def preset(name: str, **overrides) -> TrainConfig:
    """A named recipe with some fields changed: ``preset("sgd", epochs=10)``.

    Asking for a margin loss (``loss="cosface"``/``"arcface"``) on a softmax preset without a
    margin gives it ``MARGIN`` and no label smoothing, as the margin heads are meant to train.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if overrides.get("loss", "softmax") != "softmax" and PRESETS[name].loss == "softmax":
        overrides.setdefault("margin", MARGIN)
        overrides.setdefault("label_smoothing", 0.0)
    return replace(PRESETS[name], **overrides)


def default_preset(weights: str) -> str:
    """The preset ``"auto"`` stands for: ``scratch`` from random initialisation, ``finetune``
    from a facerank base, the method's ``sgd`` from ImageNet or another weights file."""
    if weights == "none":
        return "scratch"
    return "finetune" if base_folder(weights) is not None else "sgd"


def recipe(weights: str = "imagenet", name: str = "auto", **overrides) -> TrainConfig:
    """The recipe a run from ``weights`` gets: preset ``name`` (``"auto"``: ``default_preset``)
    with ``overrides``. From a base, the input size and crop are the base's unless overridden.

    >>> recipe("base/", epochs=20)   # finetune at the base's input size
    """
    name = default_preset(weights) if name == "auto" else name
    folder = base_folder(weights)
    if folder is not None:
        base = read_base_config(folder)
        overrides.setdefault("image_size", base.image_size)
        overrides.setdefault("crop", base.crop)
    return preset(name, **overrides)


def bf16_is_native() -> bool:
    """True where the CPU has AMX tiles, the only place bf16 autocast beats fp32 here.

    (oneDNN also "supports" bf16 on plain AVX-512 by emulation; measured on such a CPU, a
    ResNet50 training step was 2.7x *slower* in bf16 than in fp32, so that does not count.)
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class TrainResult:
    history: list[dict]              # one dict per epoch: losses, accuracies, seconds
    kept_epoch: int                  # the epoch whose weights were saved (see TrainConfig.keep)
    people: list[str]
    train_images: int
    test_images: int
    skipped: list[tuple[str, str]]   # (file, reason) for images that could not be read
    train_only: list[str]            # people with one image: trained on, never tested
    seconds: float
    weights_origin: str
    bf16: bool
    test_accuracy: float | None = None  # of the saved model, on the held-out split
    cache_seconds: float | None = None  # one-off cost of cached_features (not in any epoch)
    faces: dict | None = None           # the face step saved with the model (FaceStep.to_json)
    no_face: list[str] | None = None    # photos with no face found (see FaceStep.no_face)
    several_faces: list[str] | None = None  # photos with several faces: the largest was kept
    workers: int = 1                    # data-parallel processes (see facerank.scale.training)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class FaceCounts:
    """Gallery photos the face step found no face in, or several (the largest was kept)."""

    no_face: list[str]
    several_faces: list[str]


def decode_images(images: list[GalleryImage], size: int, on_step: Callable[[], None] | None = None,
                  *, crop: float = 1.0, finder: FaceFinder | None = None,
                  counts: FaceCounts | None = None
                  ) -> tuple[list[GalleryImage], torch.Tensor, list[tuple[str, str]]]:
    """Decode gallery images once, through the face step, and resize them; unreadable files
    (and, under the ``skip`` policy, photos without a face) are skipped and reported."""
    from concurrent.futures import ThreadPoolExecutor

    finder = finder or FaceFinder(FaceStep(), size=size)
    counts = counts if counts is not None else FaceCounts([], [])
    kept, arrays, skipped = [], [], []

    def read(item: GalleryImage):
        try:
            return read_file_input(finder, item.path)
        except ImageError as error:
            return error

    # Two threads: finding faces (dlib releases the GIL) and decoding use both cores.
    with ThreadPoolExecutor(max_workers=2 if finder.step.enabled else 1) as pool:
        for item, outcome in zip(images, pool.map(read, images)):
            if isinstance(outcome, ImageError):
                skipped.append((str(item.path), outcome.reason))
            else:
                image, found = outcome
                if finder.step.enabled and found == 0:
                    counts.no_face.append(str(item.path))
                elif found > 1:
                    counts.several_faces.append(str(item.path))
                if image is None:
                    skipped.append((str(item.path), "no face found"))
                else:
                    kept.append(item)
                    arrays.append(resize_for_model(image, size, crop))
            if on_step:
                on_step()
    if not arrays:
        return kept, torch.zeros((0, 3, size, size), dtype=torch.uint8), skipped
    return kept, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), skipped


def augment(batch: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Random flip, shift, shear and zoom per image (uint8 in, uint8 out)."""
    from torchvision.transforms.v2 import functional as F

    out = batch.clone()
    size = batch.shape[-1]
    for i in range(len(out)):
        image = out[i]
        if config.flip and torch.rand(()) < 0.5:
            image = F.horizontal_flip(image)
        if config.shift or config.shear or config.zoom:
            # Every draw is made whether or not it is used, so a seed gives the same images
            # whichever path below runs.
            dx, dy = ((torch.rand(2) * 2 - 1) * config.shift * size).round().tolist()
            shear = float((torch.rand(()) * 2 - 1) * config.shear)
            scale = float(1.0 + (torch.rand(()) * 2 - 1) * config.zoom)
            if config.shear or config.zoom:
                image = F.affine(image, angle=0.0, translate=[int(dx), int(dy)], scale=scale,
                                 shear=[shear, 0.0], interpolation=F.InterpolationMode.BILINEAR)
            else:
                image = _shift(image, int(dx), int(dy))
        if config.colour:
            gain, offset = ((torch.rand(2) * 2 - 1) * config.colour).tolist()
            mean = image.float().mean()
            image = ((image.float() - mean) * (1 + gain) + mean * (1 + offset)).clamp(0, 255).to(
                torch.uint8)
        if config.greyscale and torch.rand(()) < config.greyscale:
            image = F.rgb_to_grayscale(image, num_output_channels=3)
        out[i] = image
    return out


def _shift(image: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Whole-pixel translation with zero fill: the same pixels as ``F.affine`` gives for it
    (tested), by copying a slice instead of resampling: a batch augments 5x faster."""
    height, width = image.shape[-2:]
    out = torch.zeros_like(image)
    if abs(dx) < width and abs(dy) < height:
        out[..., max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
            image[..., max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    return out


def margin_logits(logits: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """The cosine head's logits with the training margin applied to each true person.

    CosFace subtracts ``margin`` from the true person's cosine, ArcFace adds it to the angle:
    either way a face print must beat every other person by a margin, not just win, which
    leaves room for people never trained on. Softmax logits pass through unchanged.
    """
    if config.loss == "softmax" or config.margin == 0.0:
        return logits
    true = logits.gather(1, labels[:, None]) / config.scale
    if config.loss == "cosface":
        with_margin = true - config.margin
    else:
        angle = torch.acos(true.clamp(-1 + 1e-6, 1 - 1e-6))
        # Past pi - margin, cos(angle + margin) would rise again; fall back to CosFace there.
        with_margin = torch.where(angle + config.margin < math.pi, torch.cos(angle + config.margin),
                                  true - config.margin * math.sin(config.margin))
    return logits.scatter(1, labels[:, None], with_margin * config.scale)


def epoch_order(labels: torch.Tensor, balanced: bool, generator: torch.Generator) -> torch.Tensor:
    """One epoch's image order: a permutation, or with ``balanced`` as many draws (with
    replacement) in which every person is equally likely, however many images each has."""
    if not balanced:
        return torch.randperm(len(labels), generator=generator)
    counts = torch.bincount(labels).float()
    weights = 1.0 / counts[labels]
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator)


def set_trainable(network: nn.Module, trainable: str) -> list[nn.Parameter]:
    """Freeze what ``trainable`` leaves out; the parameters that still train."""
    for parameter in network.parameters():
        parameter.requires_grad = trainable == "all"
    if trainable == "last_stage":
        for module in (network.layer4, network.fc):
            for parameter in module.parameters():
                parameter.requires_grad = True
    return [p for p in network.parameters() if p.requires_grad]


def _train_mode(network: nn.Module, trainable: str) -> None:
    network.train()
    if trainable == "last_stage":
        # Frozen stages keep their batch-norm statistics, as a frozen Keras base model does.
        for name, module in network.named_children():
            if name not in ("layer4", "fc"):
                module.eval()


def parameter_groups(network: nn.Module, config: TrainConfig) -> list[dict]:
    """The trainable parameters, as one group at ``lr`` or, with ``backbone_lr`` < 1, the head at
    ``lr`` and the backbone at ``lr * backbone_lr``."""
    head = [p for p in network.fc.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    backbone = [p for p in network.parameters() if p.requires_grad and id(p) not in head_ids]
    if config.backbone_lr == 1.0:
        return [{"params": backbone + head, "lr": config.lr}]
    return [{"params": backbone, "lr": config.lr * config.backbone_lr},
            {"params": head, "lr": config.lr}]


def make_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``parameters`` (a list, or groups from ``parameter_groups``)."""
    if config.optimizer == "sgd":
        kind, options = torch.optim.SGD, dict(momentum=config.momentum)
    else:
        kind, options = (torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW), {}
    # The fused (one kernel for all tensors) update is the same arithmetic as the per-tensor loop;
    # on ResNet50 it took 0.04 CPU-s a step instead of 0.17 (AdamW). torch < 2.4 has none on CPU.
    try:
        return kind(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=True,
                    **options)
    except (RuntimeError, TypeError):
        return kind(parameters, lr=config.lr, weight_decay=config.weight_decay, **options)


def make_schedule(optimizer, config: TrainConfig, steps_per_epoch: int):
    """A per-step learning-rate schedule: one-cycle to each group's own peak, or constant."""
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
            epochs=config.epochs, steps_per_epoch=steps_per_epoch,
            pct_start=0.2)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _frozen_stages(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """stem..layer3: the part ``trainable="last_stage"`` leaves frozen."""
    x = network.maxpool(network.relu(network.bn1(network.conv1(x))))
    return network.layer3(network.layer2(network.layer1(x)))


def _last_stage(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer4 + head on layer3 outputs: with ``_frozen_stages``, ``features_and_logits``' logits."""
    return network.fc(torch.flatten(network.avgpool(network.layer4(x)), 1))


def _cache_features(model: FaceModel, pixels: torch.Tensor, config: TrainConfig, *, views: int,
                    augmented: bool, use_bf16: bool, on_step: Callable[[], None] | None = None,
                    batch_size: int = 64) -> list[torch.Tensor]:
    """``views`` tensors of layer3 outputs (N x 1024 x h x w, channels-last), one per augmented
    copy of ``pixels``, with the frozen batch norms in eval mode as in uncached training.

    Augmentation draws from its own generator seeded by ``config.seed``, so a resumed run
    rebuilds the very same cache.
    """
    network = model.network
    network.eval()
    cache: list[torch.Tensor] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16))
        torch.manual_seed(config.seed + 1)
        for _ in range(views):
            view = None
            for start in range(0, len(pixels), batch_size):
                chunk = pixels[start:start + batch_size]
                out = _frozen_stages(network, model.normalise(
                    augment(chunk, config) if augmented else chunk))
                if view is None:
                    _check_cache_fits(views, len(pixels), out[0].numel() * out.element_size())
                    view = torch.empty((len(pixels),) + tuple(out.shape[1:]), dtype=out.dtype,
                                       memory_format=torch.channels_last)
                view[start:start + len(chunk)] = out
                if on_step:
                    on_step()
            cache.append(view if view is not None else torch.zeros(0))
    return cache


def _check_cache_fits(views: int, images: int, bytes_each: int) -> None:
    total = views * images * bytes_each
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on this platform: do not guess
        return
    if total > memory // 2:
        raise ValueError(f"cached features would take {total / 2**30:.1f} GiB ({views} views x "
                         f"{images} images) of this machine's {memory / 2**30:.1f} GiB; use "
                         "fewer feature views, a smaller image size, or no cached features")


def _evaluate(model: FaceModel, inputs: torch.Tensor, labels: torch.Tensor, use_bf16: bool,
              batch_size: int = 64, *, cached: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the head on already-decoded images (uint8 pixels), or
    with ``cached=True`` on their layer3 outputs."""
    model.network.eval()
    total_loss, correct = 0.0, 0
    with torch.inference_mode(), torch.autocast(model.device.type, dtype=torch.bfloat16,
                                                enabled=use_bf16):
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            y = labels[start:start + batch_size].to(model.device)
            if cached:
                logits = _last_stage(model.network, chunk)
            else:
                logits = features_and_logits(model.network, model.normalise(chunk))[1]
            logits = logits.float()
            total_loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    return total_loss / max(len(inputs), 1), correct / max(len(inputs), 1)


class Logits(nn.Module):
    """The training forward pass as one module (``DistributedDataParallel`` wraps a module and
    must see the forward pass to average gradients): the head's logits from normalised pixels,
    or with ``cached`` from layer3 outputs."""

    def __init__(self, network: nn.Module, *, cached: bool):
        super().__init__()
        self.network, self.cached = network, cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cached:
            return _last_stage(self.network, x)
        return features_and_logits(self.network, x)[1]


def train_epoch(model: FaceModel, pixels: torch.Tensor, labels: torch.Tensor, order: torch.Tensor,
                config: TrainConfig, optimizer: torch.optim.Optimizer, schedule,
                loss_fn: nn.Module, *, use_bf16: bool, cached_view: torch.Tensor | None = None,
                on_step: Callable[[], None] | None = None,
                parallel: nn.Module | None = None) -> tuple[float, float]:
    """One pass over ``order`` in batches: (mean training loss, training accuracy).

    ``pixels`` are uint8 images, augmented per batch; with ``cached_view`` (layer3 outputs of
    augmented images, see ``cached_features``) only layer4 and the head run. ``parallel``: this
    process is one rank of a data-parallel group, and ``parallel`` is the forward pass
    (``Logits``) wrapped in ``DistributedDataParallel``, whose backward averages the gradients
    of all ranks; ``order`` is then this rank's share and ``config.batch_size`` its own batch.
    """
    network = model.network
    _train_mode(network, config.trainable)
    seen, loss_sum, correct = 0, 0.0, 0
    for start in range(0, len(order), config.batch_size):
        batch = order[start:start + config.batch_size]
        if len(batch) < 2 and len(order) > 1:
            if on_step:
                on_step()
            continue  # batch norm cannot learn from a batch of one
        y = labels[batch].to(model.device)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if cached_view is not None:
                x = cached_view[batch].contiguous(memory_format=torch.channels_last)
                logits = _last_stage(network, x) if parallel is None else parallel(x)
            else:
                x = model.normalise(augment(pixels[batch], config))
                logits = features_and_logits(network, x)[1] if parallel is None else parallel(x)
        loss = loss_fn(margin_logits(logits.float(), y, config), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        seen += len(batch)
        loss_sum += loss.item() * len(batch)
        correct += int((logits.argmax(1) == y).sum())
        if on_step:
            on_step()
    return loss_sum / max(seen, 1), correct / max(seen, 1)


# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults


@contextlib.contextmanager
def malloc_keeps_freed_memory():
    """While training, let glibc's malloc reuse freed memory instead of handing it back.

    Every step allocates and frees the same large activation buffers. By default glibc serves big
    blocks with fresh mmap()s and unmaps them on free, so the kernel faults in and zeroes them
    again at every step. Measured on ResNet50, batch 32, one thread, 224 px, fresh processes in
    pairs: ~890k page faults and ~2 s of system time a step, against ~120k and ~0.5 s with this,
    13-16% fewer CPU-seconds a step; at 112 px the faults (25-40k a step) vanish too, a gain of
    a few percent. Peak memory grows by ~25%; the defaults come back, and the memory is
    released, on exit. No-op where the C library is not glibc.
    """
    libc = None
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_MMAP_MAX, 0)         # big blocks from the heap, reusable
            libc.mallopt(_M_TRIM_THRESHOLD, -1)  # and the heap never shrinks under us
        except (OSError, AttributeError):
            libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
            libc.malloc_trim(0)


def train(gallery: str | Path, store: str | Path, config: TrainConfig | None = None, *,
          weights: str = "imagenet", resume: bool = False, show_progress: bool = False,
          normalize_embeddings: bool = True, checkpoint_every: float = 60.0,
          faces: FaceStep | str = "auto", face_model: str | Path | None = None,
          no_face: str | None = None, allow_base_mismatch: bool = False,
          rank: int = 0, workers: int = 1, device: str = "cpu") -> TrainResult:
    """Fine-tune ResNet50 on a one-folder-per-person gallery and save the model into ``store``.

    Writes ``store/model.json`` + weights, and under ``store/train/``: ``history.json`` (per-epoch
    loss and accuracy), ``curves.png``, ``split.json`` (which files were held out) and the
    ``checkpoint.pt`` (written at most every ``checkpoint_every`` seconds). With ``resume=True`` an
    interrupted run continues from that checkpoint (with ``cached_features``, after rebuilding
    the same cache). ``faces``: the face step (a ``FaceStep``, or a detector name for
    ``facerank.faces.detection.face_step``, with ``face_model`` and ``no_face``; ``"auto"`` is a base's
    own step, else aligned faces where dlib is installed); it is saved with the model, and
    detections are cached in ``store/faces.sqlite``. The saved model is the last epoch's, or with
    ``keep="best"`` the one with the best held-out accuracy.

    From a facerank base (``weights`` = the folder ``facerank pretrain`` wrote) the recipe
    defaults to ``finetune`` and the preprocessing to the base's; a run that asks for another
    input size, crop or face step is refused unless ``allow_base_mismatch``.

    Data-parallel (``facerank.scale.train_on_ray`` sets these): with ``workers`` > 1 this process
    is rank ``rank`` of an initialised ``torch.distributed`` group (gloo on CPU, nccl on GPU).
    Every rank draws the same seeded order each epoch and takes every ``workers``-th image of it,
    in batches of ``batch_size / workers``: the effective batch is ``batch_size``, batch k of all
    ranks together is batch k of one process. Only rank 0 scores the held-out split and writes
    the store (the same files as local training); ``device`` is where the network runs.

    >>> result = train("gallery/", "faces/", preset("freeze", cached_features=True))
    """
    config = config or recipe(weights)
    if workers > 1:
        _check_data_parallel(config, rank, workers)
    lead = rank == 0  # the one rank that scores the held-out split and writes the store
    started = time.perf_counter()
    store = Path(store)
    run_dir = store / TRAIN_FOLDER
    torch.manual_seed(config.seed)
    # Weights first: a missing download should fail in seconds, not after decoding the gallery.
    backbone_state, weights_origin = load_backbone_weights(weights)

    folder = base_folder(weights)
    base = read_base_config(folder) if folder is not None else None
    if isinstance(faces, FaceStep):
        step = faces if no_face is None else replace(faces, no_face=no_face)
    elif faces == "auto" and base is not None and face_model is None:
        step = replace(base.faces, no_face=no_face or base.faces.no_face)
    else:
        step = face_step(faces, model_file=face_model, no_face=no_face or "whole")
    if base is not None and not allow_base_mismatch:
        found = differences(base, image_size=config.image_size, crop=config.crop, faces=step)
        if found:
            raise StoreMismatchError(
                f"{folder} was pretrained on other inputs than this run asks for "
                f"({'; '.join(found)}): drop the override to fine-tune as the base was made, "
                "or pass allow_base_mismatch=True (--allow-base-mismatch) to adapt it anyway")
    # Other ranks find faces without the store's cache: only rank 0 writes into the store.
    finder = FaceFinder(step, size=config.image_size, cache=DetectionCache(
        store / "faces.sqlite") if step.enabled and lead else None)
    if step.enabled and lead:
        store.mkdir(parents=True, exist_ok=True)
    counts = FaceCounts([], [])

    scanned = scan_gallery(gallery)
    split = split_gallery(scanned, test_fraction=config.test_fraction, seed=config.seed)
    progress = Progress(show_progress and lead)
    with progress:
        task = progress.add("finding faces" if step.enabled else "decoding",
                            len(split.train) + len(split.test))
        train_items, train_pixels, skipped = decode_images(
            list(split.train), config.image_size, lambda: progress.advance(task), crop=config.crop,
            finder=finder, counts=counts)
        test_items, test_pixels, skipped_test = decode_images(
            list(split.test) if lead else [], config.image_size, lambda: progress.advance(task),
            crop=config.crop,
            finder=finder, counts=counts)
    skipped += skipped_test
    people = sorted({item.person for item in train_items})
    if len(people) < 2:
        raise GalleryError(f"{gallery}: training needs at least two people with readable "
                           f"images; found {len(people)}")
    label_of = {person: i for i, person in enumerate(people)}
    train_labels = torch.tensor([label_of[i.person] for i in train_items])
    # Test images of people absent from training (all their train images broken) cannot be scored.
    keep = [i for i, item in enumerate(test_items) if item.person in label_of]
    test_items = [test_items[i] for i in keep]
    test_pixels = test_pixels[keep] if len(keep) else test_pixels[:0]
    test_labels = torch.tensor([label_of[i.person] for i in test_items], dtype=torch.long)

    model = FaceModel.from_backbone(people, backbone_state, weights_origin,
                                    image_size=config.image_size, crop=config.crop,
                                    normalize_embeddings=normalize_embeddings,
                                    head="linear" if config.loss == "softmax" else "cosine",
                                    head_scale=config.scale, faces=step)
    network = model.network.to(device, memory_format=torch.channels_last)
    model.device = torch.device(device)
    set_trainable(network, config.trainable)
    optimizer = make_optimizer(parameter_groups(network, config), config)
    # One rank's batch and share of each epoch (all of it in local training); the share is cut
    # to a multiple of the workers so that every rank takes the same number of steps.
    rank_config = replace(config, batch_size=config.batch_size // workers)
    rank_share = (len(train_items) - len(train_items) % workers) // workers
    steps_per_epoch = math.ceil(rank_share / rank_config.batch_size)
    if workers > 1 and rank_share % rank_config.batch_size == 1 and rank_share > 1:
        steps_per_epoch -= 1  # train_epoch skips a last batch of one: the schedule must end
    schedule = make_schedule(optimizer, config, steps_per_epoch)
    use_bf16 = bf16_is_native() if config.bf16 is None else config.bf16
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    parallel = None
    if workers > 1:
        # Plain BatchNorm, each rank normalising over its own batch_size / workers images, as
        # torchvision's reference recipe does by default. SyncBatchNorm would match one process
        # but runs on GPUs only (torch refuses CPU tensors), and adds two collectives per BN
        # layer (53 in ResNet50) per step.
        parallel = nn.parallel.DistributedDataParallel(
            Logits(network, cached=config.cached_features),
            device_ids=[model.device.index or 0] if model.device.type == "cuda" else None)
        # Same initial weights (seeded above; DDP also broadcasts rank 0's), but each rank its
        # own augmentation draws.
        torch.manual_seed(config.seed + rank)

    history: list[dict] = []
    best_score, kept_epoch, kept_state = -1.0, 0, None
    first_epoch = 1
    checkpoint_path = run_dir / "checkpoint.pt"
    checkpoint_meta = json.dumps({"people": people, "config": asdict(config),
                                  "weights_origin": model.config.weights_origin,
                                  "faces": step.to_json()})
    if resume and checkpoint_path.exists():
        checkpoint = restore_checkpoint(checkpoint_path, checkpoint_meta, network, optimizer,
                                        schedule, command="train")
        history = json.loads(checkpoint["history"])
        first_epoch = int(checkpoint["epoch"]) + 1
        kept_state, kept_epoch = checkpoint["kept_model"], int(checkpoint["kept_epoch"])
        best_score = float(checkpoint["best_score"])

    shuffle = torch.Generator().manual_seed(config.seed)
    for _ in range(first_epoch - 1):  # replay the shuffles of finished epochs
        epoch_order(train_labels, config.balanced, shuffle)

    with malloc_keeps_freed_memory(), progress:
        cache_seconds, train_views, test_inputs = None, None, test_pixels
        if config.cached_features and first_epoch <= config.epochs:
            cache_started = time.perf_counter()
            batches = math.ceil(len(train_items) / 64)
            task = progress.add("caching features",
                                config.feature_views * batches + math.ceil(len(test_items) / 64))
            train_views = _cache_features(model, train_pixels, config,
                                          views=config.feature_views, augmented=True,
                                          use_bf16=use_bf16, on_step=lambda: progress.advance(task))
            test_inputs = _cache_features(model, test_pixels, config, views=1, augmented=False,
                                          use_bf16=use_bf16,
                                          on_step=lambda: progress.advance(task))[0]
            cache_seconds = round(time.perf_counter() - cache_started, 3)

        last_checkpoint = time.perf_counter()
        task = progress.add("training", (config.epochs - first_epoch + 1) * steps_per_epoch)
        for epoch in range(first_epoch, config.epochs + 1):
            epoch_started = time.perf_counter()
            order = epoch_order(train_labels, config.balanced, shuffle)
            if workers > 1:
                order = order[:rank_share * workers][rank::workers]
            view = train_views[(epoch - 1) % len(train_views)] if train_views is not None else None
            train_loss, train_accuracy = train_epoch(
                model, train_pixels, train_labels, order, rank_config, optimizer, schedule,
                loss_fn, use_bf16=use_bf16, cached_view=view,
                on_step=lambda: progress.advance(task), parallel=parallel)
            row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
                   "lr": optimizer.param_groups[-1]["lr"]}
            if workers > 1:  # the train figures are rank 0's, over its share of the images
                row["images_per_worker"] = len(order)
            if len(test_items):
                row["val_loss"], row["val_accuracy"] = _evaluate(
                    model, test_inputs, test_labels, use_bf16, cached=train_views is not None)
            row["seconds"] = round(time.perf_counter() - epoch_started, 3)
            history.append(row)
            score = row.get("val_accuracy", row["train_accuracy"])
            if config.keep == "last":
                kept_epoch = epoch
            elif lead and score >= best_score:  # ties go to the later, longer-trained epoch
                best_score, kept_epoch = score, epoch
                kept_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            # A ResNet50 checkpoint with optimizer state is ~300 MB: write it at most once a
            # minute (and after the last epoch), so an interruption costs at most that much work.
            if lead and (epoch == config.epochs
                         or time.perf_counter() - last_checkpoint > checkpoint_every):
                save_checkpoint(checkpoint_path, {
                    "model": network.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "rng": torch.get_rng_state(),
                    "epoch": epoch, "history": json.dumps(history), "meta": checkpoint_meta,
                    "kept_model": kept_state, "kept_epoch": kept_epoch, "best_score": best_score})
                last_checkpoint = time.perf_counter()
            progress.describe(task, f"epoch {epoch}/{config.epochs} loss {row['train_loss']:.3f}"
                              + (f" val {row['val_accuracy']:.1%}" if "val_accuracy" in row else ""))

        if not lead:
            return _rank_result(history, train_items, people, started, model, use_bf16, step,
                                workers)
        if kept_state is not None:
            network.load_state_dict(kept_state)
        network.to("cpu").eval()  # saved and scored on the CPU, where queries run
        model.device = torch.device("cpu")
        # Every writer of a store takes its lock; this one waits for as long as an index build
        # or an enrolment takes rather than throw away a finished training run.
        with FolderLock(store, wait=None):
            model.save(store)
        test_accuracy = None
        if len(test_items):
            kept_row = next(row for row in history if row["epoch"] == kept_epoch)
            if use_bf16 or config.cached_features or "val_accuracy" not in kept_row:
                # Scored in bf16 or on cached features during training: score the saved model
                # once more, in fp32 and from pixels, as queries will see it.
                test_accuracy = _evaluate(model, test_pixels, test_labels, use_bf16=False)[1]
            else:
                # Same weights, same inputs, same fp32 arithmetic: the epoch's own score.
                test_accuracy = kept_row["val_accuracy"]
    result = TrainResult(
        history=history, kept_epoch=kept_epoch, people=people, train_images=len(train_items),
        test_images=len(test_items), skipped=skipped, train_only=list(split.train_only),
        seconds=round(time.perf_counter() - started, 2), weights_origin=model.config.weights_origin,
        bf16=use_bf16, test_accuracy=test_accuracy, cache_seconds=cache_seconds,
        faces=step.to_json(), no_face=counts.no_face, several_faces=counts.several_faces,
        workers=workers)
    atomic.write_json(run_dir / "history.json", {"config": asdict(config), **result.to_json()})
    write_split(store, train_items, test_items, seed=config.seed,
                test_fraction=config.test_fraction)
    plot_history(history, run_dir / "curves.png")
    return result


def check_workers(config: TrainConfig, workers: int) -> None:
    """Refuse a data-parallel run whose batch does not divide evenly among its workers."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    if config.batch_size % workers:
        raise ValueError(f"batch size {config.batch_size} does not divide among {workers} "
                         f"workers: use a multiple of {workers} (each worker takes batch_size / "
                         "workers images a step, so the effective batch stays batch_size)")


def _check_data_parallel(config: TrainConfig, rank: int, workers: int) -> None:
    check_workers(config, workers)
    if not 0 <= rank < workers:
        raise ValueError(f"rank must be in 0..{workers - 1}; got {rank}")
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise ValueError(f"workers={workers} needs an initialised torch.distributed process group: "
                         "train through facerank.scale.train_on_ray (facerank train --workers N)")


def _rank_result(history, train_items, people, started, model, use_bf16, step,
                 workers) -> TrainResult:
    """What a rank other than 0 returns: it trained on its share, but scored and saved nothing."""
    return TrainResult(history=history, kept_epoch=0, people=people, train_images=len(train_items),
                       test_images=0, skipped=[], train_only=[],
                       seconds=round(time.perf_counter() - started, 2),
                       weights_origin=model.config.weights_origin, bf16=use_bf16,
                       faces=step.to_json(), workers=workers)


def restore_checkpoint(path: Path, meta: str, network: nn.Module, optimizer, schedule, *,
                       command: str) -> dict:
    """Put a checkpoint's weights, optimizer, schedule and random state back into a run, and
    return it (its epoch, history...). One made by another run (``meta`` differs) is refused."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint["meta"] != meta:
        raise StoreMismatchError(f"{path} was made with other people or another recipe; "
                                 f"{command} without --resume to start afresh")
    network.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    schedule.load_state_dict(checkpoint["schedule"])
    torch.set_rng_state(checkpoint["rng"])
    return checkpoint


def save_checkpoint(path: Path, checkpoint: dict) -> None:
    """Write a training checkpoint atomically: a crash leaves the previous one whole."""
    # Tensors, numbers and strings only, so that torch.load(weights_only=True) can read it back.
    atomic.write_with(path, lambda temporary: torch.save(checkpoint, temporary))


def plot_history(history: list[dict], path: Path, *, held_out_label: str = "held-out") -> None:
    """Loss and accuracy per epoch, train and held-out, as a two-panel PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in ((loss_axis, "loss", "Loss"), (accuracy_axis, "accuracy", "Accuracy")):
        axis.plot(epochs, [row[f"train_{key}"] for row in history], label="train")
        if history and f"val_{key}" in history[0]:
            axis.plot(epochs, [row[f"val_{key}"] for row in history], label=held_out_label)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    atomic.write_with(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))
    plt.close(figure)
