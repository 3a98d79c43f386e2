"""Training recipes: ``TrainConfig``, the fine-tuning presets, which one a run from given
weights gets, and pretraining's recipe (``PRETRAIN``).

Four presets. Two are the method's, and assume ImageNet weights:

* ``sgd``    — SGD, momentum 0.9, lr 0.01, batch 10, 6 epochs, every layer trainable;
* ``freeze`` — Adam lr 1e-4, batch 10, 6 epochs, all frozen but the last residual stage + head.

The third, ``scratch``, is for random initialisation (no ImageNet weights to be had): 64 px,
batch 32, 40 epochs, AdamW with a one-cycle schedule and bf16 autocast where the CPU has AMX.

The fourth, ``finetune``, is for a face prior made by ``facerank pretrain`` (a *base*): a
CosFace head at lr 2e-3, the backbone at a tenth of that, 15 epochs at the base's input size,
batch norm with the base's statistics.
``recipe(weights)`` picks it whenever the weights are a base, as ``scratch`` for ``none``.

Every default lives here (the CLI reads them for its help text and passes ``None`` for "not
given"); nothing here imports torch, so ``facerank --help`` stays fast.

>>> preset("scratch", epochs=40).epochs
40
>>> preset("sgd", loss="cosface").margin == MARGIN
True
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace

from facerank.errors import UsageError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "onecycle")
TRAINABLE = ("all", "last_stage")
LOSSES = ("softmax", "cosface", "arcface")  # the last two train a cosine head with a margin
KEEP = ("last", "best")         # which epoch's weights are saved

# A CosFace/ArcFace head's margin when a recipe asks for the loss but gives no margin: CosFace
# subtracts it from the true person's cosine, ArcFace adds it to the angle (radians).
MARGIN = 0.2


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
    margin: float | None = None     # cosface: subtracted from the true person's cosine;
                                    # arcface: added to the angle (radians). None: MARGIN for
                                    # those losses, 0 for softmax
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
    # Batch-norm layers normalise with the statistics the weights came with, as at query time,
    # instead of each batch's own; their scale and shift still learn. Fine-tuning a face prior
    # on a few hundred photos with batch statistics let a few photos' activations grow
    # thousands of times over at query time, unseen in training (measured: see ``finetune``).
    frozen_bn: bool = False
    # From random initialisation there are no statistics to keep, and batch statistics to the
    # end can leave the same query-time blow-ups. ``frozen_bn_tail``: the last share of the
    # epochs (rounded down) trains with batch norm frozen at the statistics learnt so far, so
    # the weights settle on the normalisation queries will get; refused with ``frozen_bn``,
    # which freezes every epoch. 0.15 makes "unknown" usable from scratch at a cost in top-1
    # (see ``scratch``).
    frozen_bn_tail: float = 0.0
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

    def frozen_bn_at(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (1-based) trains with batch norm frozen.

        >>> [preset("scratch", epochs=4, frozen_bn_tail=0.5).frozen_bn_at(e) for e in (1, 2, 3, 4)]
        [False, False, True, True]
        """
        # round() first: 0.35 * 180 is 62.99999... in floating point, and means 63 epochs.
        tail_epochs = math.floor(round(self.frozen_bn_tail * self.epochs, 6))
        return self.frozen_bn or epoch > self.epochs - tail_epochs

    def __post_init__(self):
        for name, value, choices in (("optimizer", self.optimizer, OPTIMIZERS),
                                     ("schedule", self.schedule, SCHEDULES),
                                     ("trainable", self.trainable, TRAINABLE),
                                     ("loss", self.loss, LOSSES),
                                     ("keep", self.keep, KEEP)):
            if value not in choices:
                raise UsageError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        if self.margin is None:  # frozen: set once, here, to the loss's default
            object.__setattr__(self, "margin", 0.0 if self.loss == "softmax" else MARGIN)
        if self.margin < 0:
            raise UsageError(f"margin must be >= 0; got {self.margin}")
        if self.epochs < 1 or self.batch_size < 1 or self.image_size < 32:
            raise UsageError("epochs and batch_size must be >= 1 and image_size >= 32")
        if self.cached_features and self.trainable != "last_stage":
            raise UsageError("cached_features needs trainable='last_stage' (the freeze preset): "
                             "with every layer training, the features change at every step and "
                             "cannot be cached")
        if not 0.1 <= self.crop <= 1.0:
            raise UsageError(f"crop must be between 0.1 and 1 (a share of the image); "
                             f"got {self.crop}")
        if self.feature_views < 1:
            raise UsageError(f"feature_views must be >= 1; got {self.feature_views}")
        if not 0.0 <= self.frozen_bn_tail < 1.0:
            raise UsageError(f"frozen_bn_tail must be in [0, 1) (a share of the epochs); "
                             f"got {self.frozen_bn_tail}")
        if self.frozen_bn and self.frozen_bn_tail:
            raise UsageError("frozen_bn already freezes batch norm in every epoch; "
                             "frozen_bn_tail is for training on batch statistics (--batch-bn)")
        if not 0.0 < self.backbone_lr <= 1.0:
            raise UsageError(f"backbone_lr must be in (0, 1] (a share of lr); "
                             f"got {self.backbone_lr}")


PRESETS: dict[str, TrainConfig] = {
    "sgd": TrainConfig(preset="sgd", optimizer="sgd", lr=0.01, momentum=0.9, batch_size=10,
                       epochs=6, trainable="all", bf16=False),
    "freeze": TrainConfig(preset="freeze", optimizer="adam", lr=1e-4, batch_size=10, epochs=6,
                          trainable="last_stage", bf16=False),
    # Batch statistics to the end (no frozen_bn_tail): freezing the last 15% of epochs makes
    # "unknown" usable (recognition.py, orl-unknown-seed0-bn-tail-*: enrolled photos named
    # right 4.8% -> 69%) at a cost in ORL top-1 over three seeds (one photo of 360 on whole
    # images, two on aligned faces) that every store would pay; `calibrate` points to it.
    "scratch": TrainConfig(preset="scratch", optimizer="adamw", lr=2e-3, weight_decay=0.05,
                           batch_size=32, epochs=40, schedule="onecycle", image_size=64,
                           label_smoothing=0.1),
    # From a facerank base (``facerank pretrain``): the new head learns at lr, the pretrained
    # backbone at a tenth of it, so a few hundred photos adjust the face prior without
    # overwriting it; a CosFace head like the base's own. The image size is the base's.
    # Batch norm keeps the base's statistics: with batch statistics (batches of 32 from a few
    # dozen people), 15 epochs on ORL left a few photos whose face prints, at query time, were
    # thousands of times longer than the rest and all pointed one way, each the nearest
    # "match" of strangers (benchmarks/finetune_bn.py).
    "finetune": TrainConfig(preset="finetune", optimizer="adamw", lr=2e-3, weight_decay=0.05,
                            batch_size=32, epochs=15, schedule="onecycle", image_size=64,
                            loss="cosface", backbone_lr=0.1, zoom=0.1, frozen_bn=True),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A named recipe with some fields changed: ``preset("sgd", epochs=10)``. An override of
    ``None`` keeps the preset's value (the CLI passes ``None`` for an option not given).

    Changing the loss without a margin gives the new loss's default (``MARGIN`` for CosFace and
    ArcFace, 0 for softmax); a margin loss on a softmax preset also drops label smoothing, as
    the margin heads are meant to train. ``frozen_bn=True`` without a ``frozen_bn_tail`` drops
    the preset's tail (every epoch is frozen already).

    >>> facerank.preset("sgd", epochs=10).epochs
    10
    >>> facerank.preset("sgd", loss="cosface").margin   # MARGIN
    0.2
    """
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if overrides.get("frozen_bn"):  # frozen in every epoch: no tail of frozen epochs to add
        overrides.setdefault("frozen_bn_tail", 0.0)
    if overrides.get("loss", PRESETS[name].loss) != PRESETS[name].loss:
        overrides.setdefault("margin", None)  # resolved by TrainConfig to the loss's default
        if PRESETS[name].loss == "softmax":
            overrides.setdefault("label_smoothing", 0.0)
    return replace(PRESETS[name], **overrides)


def default_preset(weights: str) -> str:
    """The preset ``"auto"`` stands for: ``scratch`` from random initialisation, ``finetune``
    from a facerank base, the method's ``sgd`` from ImageNet or another weights file."""
    from facerank.model.base import base_folder

    if weights == "none":
        return "scratch"
    return "finetune" if base_folder(weights) is not None else "sgd"


def recipe(weights: str = "imagenet", name: str = "auto", **overrides) -> TrainConfig:
    """The recipe a run from ``weights`` gets: preset ``name`` (``"auto"``: ``default_preset``)
    with ``overrides``. From a base, the input size and crop are the base's unless overridden.

    >>> facerank.recipe("none").preset       # random initialisation
    'scratch'
    >>> facerank.recipe("imagenet", epochs=20).epochs
    20

    From a base folder (``facerank pretrain``), ``recipe("base/")`` is ``finetune`` at the
    base's input size.
    """
    from facerank.model.base import base_folder, read_base_config

    overrides = {key: value for key, value in overrides.items() if value is not None}
    name = default_preset(weights) if name == "auto" else name
    folder = base_folder(weights)
    if folder is not None:
        base = read_base_config(folder)
        overrides.setdefault("image_size", base.image_size)
        overrides.setdefault("crop", base.crop)
    return preset(name, **overrides)


# Pretraining's margin for each margin loss: wider than fine-tuning's MARGIN, as in the CosFace
# paper. ArcFace's is an angle (radians): CosFace's 0.35 is too wide as one.
PRETRAIN_MARGINS = {"cosface": 0.35, "arcface": 0.3}
PRETRAIN_MIN_PHOTOS = 2  # people with fewer photos are left out of pretraining

PRETRAIN = TrainConfig(preset="pretrain", optimizer="adamw", lr=2e-3, weight_decay=0.05,
                       batch_size=64, epochs=20, schedule="onecycle", image_size=64,
                       loss="cosface", margin=PRETRAIN_MARGINS["cosface"], scale=30.0,
                       balanced=True, zoom=0.1, colour=0.2, greyscale=0.2, test_fraction=0.05)


def with_new_fields(saved: dict) -> dict:
    """A recipe saved earlier (``asdict`` of a ``TrainConfig``, through JSON), with any field
    added since at its default: what the older run did.

    >>> with_new_fields({"epochs": 3})["frozen_bn"]
    False
    """
    defaults = json.loads(json.dumps(asdict(TrainConfig())))  # as JSON gives them back
    return {**defaults, **saved}


def pretrain_recipe(**overrides) -> TrainConfig:
    """``PRETRAIN`` with some fields changed: ``pretrain_recipe(epochs=40, image_size=112)``.
    ``test_fraction`` is the share of *people* held out for the per-epoch pair score. An
    override of ``None`` keeps ``PRETRAIN``'s value; the margin is the loss's
    ``PRETRAIN_MARGINS`` unless given.

    >>> facerank.pretrain_recipe(loss="arcface").margin   # PRETRAIN_MARGINS["arcface"]
    0.3
    """
    overrides = {key: value for key, value in overrides.items() if value is not None}
    loss = overrides.get("loss", PRETRAIN.loss)
    if loss not in PRETRAIN_MARGINS:
        raise UsageError(f"pretraining needs a margin loss: {' or '.join(PRETRAIN_MARGINS)}; "
                         f"got {loss!r}")
    overrides.setdefault("margin", PRETRAIN_MARGINS[loss])
    return replace(PRETRAIN, **overrides)
