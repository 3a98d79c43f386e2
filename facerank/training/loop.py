"""The training loop: ``train`` and ``train_epoch``, checkpoints, per-epoch history, and the
checks a data-parallel run needs.

With ``trainable="last_stage"`` (the ``freeze`` preset) ``cached_features=True`` runs the frozen
stem..layer3 once per image and augmented view instead of once per image per epoch, and trains
layer4 + head on those stored outputs (see ``TrainConfig.feature_views``).

>>> config = preset("scratch", epochs=40)
>>> result = train("gallery/", "faces/", config, weights="none")
>>> result.history[-1]["val_accuracy"]
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from facerank import atomic
from facerank.data.gallery import TRAIN_FOLDER, scan_gallery, split_gallery, write_split
from facerank.errors import GalleryError, StoreMismatchError, UsageError
from facerank.faces.cache import DetectionCache
from facerank.faces.detection import FaceFinder, FaceStep, face_step
from facerank.folder_lock import FolderLock
from facerank.model.base import base_folder, differences, read_base_config
from facerank.model.network import features_and_logits, load_backbone_weights
from facerank.model.torch_model import FaceModel
from facerank.progress import Progress
from facerank.training.augmentation import FaceCounts, augment, decode_images
from facerank.training.losses import margin_logits
from facerank.training.memory import malloc_keeps_freed_memory
from facerank.training.plots import plot_history
from facerank.training.recipes import TrainConfig, recipe, with_new_fields

# A training run's files, in ``store/TRAIN_FOLDER`` (pretraining: in its ``out`` folder).
HISTORY_FILE = "history.json"    # the recipe, the TrainResult and one row per epoch
CURVES_FILE = "curves.png"       # plot_history of that history
CHECKPOINT_FILE = "checkpoint.pt"  # what resume=True continues from


def bf16_is_native(device: torch.device | None = None) -> bool:
    """True on a GPU with native bf16, and on a CPU with AMX tiles: where bf16 autocast beats
    fp32.

    (oneDNN also "supports" bf16 on plain AVX-512 by emulation; measured on such a CPU, a
    ResNet50 training step was 2.7x *slower* in bf16 than in fp32, so that does not count.)
    """
    if device is not None and device.type == "cuda":  # Ampere and later; before, emulated
        return torch.cuda.get_device_capability(device) >= (8, 0)
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def training_device(name: str) -> torch.device:
    """``"cpu"`` or ``"cuda"`` (``"cuda:N"``) as a device, refused in one line where torch
    sees no GPU."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"device must be cpu, cuda or cuda:N; got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r}: torch sees no CUDA GPU here "
                         "(torch.cuda.is_available() is False); use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"device {name!r}: torch sees {torch.cuda.device_count()} GPU(s), "
                         "numbered from 0")
    return device


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
    history_path: str | None = None     # the run's HISTORY_FILE (rank 0 only)
    curves_path: str | None = None      # the run's CURVES_FILE (rank 0 only)

    def to_json(self) -> dict:
        return asdict(self)


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


def _train_mode(network: nn.Module, config: TrainConfig, epoch: int) -> None:
    network.train()
    if config.trainable == "last_stage":
        # Frozen stages keep their batch-norm statistics, as a frozen Keras base model does.
        for name, module in network.named_children():
            if name not in ("layer4", "fc"):
                module.eval()
    if config.frozen_bn_at(epoch):
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
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
    total = config.epochs * steps_per_epoch
    # One-cycle needs a step to warm up in and one to anneal in (torch divides by the length of
    # each phase): a run of one or two steps (one epoch of a tiny gallery) trains at a constant
    # rate, and a short one warms up for at least one step.
    if config.schedule == "onecycle" and total >= 3:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
            epochs=config.epochs, steps_per_epoch=steps_per_epoch,
            pct_start=max(0.2, 2.0 / total))
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
        raise UsageError(f"cached features would take {total / 2**30:.1f} GiB ({views} views x "
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
                loss_fn: nn.Module, *, epoch: int, use_bf16: bool,
                cached_view: torch.Tensor | None = None,
                on_step: Callable[[], None] | None = None,
                parallel: nn.Module | None = None) -> tuple[float, float]:
    """One pass over ``order`` in batches, epoch ``epoch`` of ``config`` (1-based): (mean
    training loss, training accuracy).

    ``pixels`` are uint8 images, augmented per batch; with ``cached_view`` (layer3 outputs of
    augmented images, see ``cached_features``) only layer4 and the head run. ``parallel``: this
    process is one rank of a data-parallel group, and ``parallel`` is the forward pass
    (``Logits``) wrapped in ``DistributedDataParallel``, whose backward averages the gradients
    of all ranks; ``order`` is then this rank's share and ``config.batch_size`` its own batch.
    """
    network = model.network
    _train_mode(network, config, epoch)
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



def train(gallery: str | Path, store: str | Path, config: TrainConfig | None = None, *,
          weights: str = "imagenet", resume: bool = False, show_progress: bool = False,
          normalize_embeddings: bool = True, checkpoint_every: float = 60.0,
          faces: FaceStep | str = "auto", face_model: str | Path | None = None,
          no_face: str | None = None, allow_base_mismatch: bool = False,
          rank: int = 0, workers: int = 1, device: str = "cpu") -> TrainResult:
    """Fine-tune ResNet50 on a one-folder-per-person gallery and save the model into ``store``.

    Writes ``store/model.json`` + weights, and under ``store/train/`` (``TRAIN_FOLDER``):
    ``history.json`` (per-epoch loss and accuracy; ``result.history_path``), ``curves.png``
    (``result.curves_path``), ``split.json`` (which files were held out) and the
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

    >>> config = facerank.preset("scratch", epochs=1, image_size=32)
    >>> result = facerank.train("GALLERY/", "new-store/", config, weights="none", faces="none")
    >>> len(result.history), result.curves_path.endswith("curves.png")
    (1, True)
    """
    config = config or recipe(weights)
    if config.frozen_bn and weights == "none":
        raise UsageError("frozen_bn keeps the starting weights' batch-norm statistics, and "
                         "random initialisation has none to keep (mean 0, variance 1): train "
                         "with batch statistics (--batch-bn) from weights none")
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
    use_bf16 = bf16_is_native(model.device) if config.bf16 is None else config.bf16
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
    checkpoint_path = run_dir / CHECKPOINT_FILE
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
                loss_fn, epoch=epoch, use_bf16=use_bf16, cached_view=view,
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
        # or an addition takes rather than throw away a finished training run.
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
        workers=workers, history_path=str(run_dir / HISTORY_FILE),
        curves_path=str(run_dir / CURVES_FILE))
    atomic.write_json(run_dir / HISTORY_FILE, {"config": asdict(config), **result.to_json()})
    write_split(store, train_items, test_items, seed=config.seed,
                test_fraction=config.test_fraction)
    plot_history(history, run_dir / CURVES_FILE)
    return result


def check_workers(config: TrainConfig, workers: int) -> None:
    """Refuse a data-parallel run whose batch does not divide evenly among its workers."""
    if workers < 1:
        raise UsageError(f"workers must be >= 1; got {workers}")
    if config.batch_size % workers:
        raise UsageError(f"batch size {config.batch_size} does not divide among {workers} "
                         f"workers: use a multiple of {workers} (each worker takes batch_size / "
                         "workers images a step, so the effective batch stays batch_size)")


def _check_data_parallel(config: TrainConfig, rank: int, workers: int) -> None:
    check_workers(config, workers)
    if not 0 <= rank < workers:
        raise UsageError(f"rank must be in 0..{workers - 1}; got {rank}")
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise UsageError(f"workers={workers} needs an initialised torch.distributed process group: "
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
    if not _same_run(checkpoint["meta"], meta):
        raise StoreMismatchError(f"{path} was made with other people or another recipe"
                                 f"{_recipe_difference(checkpoint['meta'], meta)}; "
                                 f"{command} without --resume to start afresh")
    network.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    schedule.load_state_dict(checkpoint["schedule"])
    torch.set_rng_state(checkpoint["rng"])
    return checkpoint


def _same_run(saved_meta: str, meta: str) -> bool:
    """Whether a checkpoint's meta is this run's. A recipe field added since the checkpoint was
    written counts as at its default, which is what the older run did."""
    saved, current = json.loads(saved_meta), json.loads(meta)
    saved["config"] = with_new_fields(saved["config"])
    return saved == current


def _recipe_difference(saved_meta: str, meta: str) -> str:
    """The recipe fields a refused checkpoint differs in, as " (field: then -> now, ...)"; ""
    when the recipe is the same (the people differ)."""
    saved = with_new_fields(json.loads(saved_meta)["config"])
    current = json.loads(meta)["config"]
    changed = [f"{key}: {saved.get(key)!r} -> {value!r}" for key, value in current.items()
               if saved.get(key) != value]
    return f" ({', '.join(changed)})" if changed else ""


def save_checkpoint(path: Path, checkpoint: dict) -> None:
    """Write a training checkpoint atomically: a crash leaves the previous one whole."""
    # Tensors, numbers and strings only, so that torch.load(weights_only=True) can read it back.
    atomic.write_with(path, lambda temporary: torch.save(checkpoint, temporary))
