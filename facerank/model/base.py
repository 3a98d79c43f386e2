"""A face prior: a ResNet50 backbone pretrained on many people's faces, saved without a head.

``facerank pretrain`` makes one; ``facerank train --weights BASE`` fine-tunes it on a user's own
people. A base is a folder holding ``base-<fingerprint>.safetensors`` (the backbone's weights,
no classifier) and ``base.json``: how it was made and the preprocessing it expects — input size, crop,
normalisation and the face step. Fine-tuning takes that preprocessing with it, so a store built
on a base feeds the network exactly as pretraining did.

>>> weights, config = read_base("base/")
>>> config.image_size, config.faces.describe()
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from facerank import atomic
from facerank.model.config import IMAGENET_MEAN, IMAGENET_STD
from facerank.errors import StoreError, StoreMismatchError
from facerank.faces.detection import FaceStep

BASE_CONFIG = "base.json"
BASE_FORMAT = "facerank-base/1"


@dataclass(frozen=True)
class BaseConfig:
    """What a base is and expects, saved as ``base.json`` beside its weights."""

    image_size: int                  # the aligned faces' side in pixels, as pretrained
    faces: FaceStep                  # how faces were found and aligned
    crop: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    arch: str = "resnet50"
    weights_file: str = ""           # base-<fingerprint>.safetensors, beside base.json
    fingerprint: str = ""            # sha256 of the weights file, checked on every read
    weights_origin: str = "none"     # what pretraining started from
    loss: str = ""                   # the margin loss it was pretrained with
    margin: float = 0.0
    people: int = 0                  # identities trained on
    images: int = 0
    epochs: int = 0
    verification: dict = field(default_factory=dict)  # last epoch's held-out pair score
    facerank_version: str = ""
    format: str = BASE_FORMAT

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "BaseConfig":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        for name in ("mean", "std"):
            if name in known:
                known[name] = tuple(known[name])
        known["faces"] = FaceStep.from_json(known.get("faces"))
        return cls(**known)

    def describe(self) -> str:
        """One line: what this base is."""
        score = self.verification.get("accuracy")
        return (f"facerank base: {self.arch} pretrained on {self.images} photos of {self.people} "
                f"people ({self.loss}, {self.epochs} epochs, from {self.weights_origin}); "
                f"{self.image_size} px, {self.faces.describe()}"
                + (f"; held-out pairs {score:.1%}" if score is not None else ""))


def base_folder(weights: str | Path) -> Path | None:
    """The folder of the base that ``weights`` names (the folder, its ``base.json`` or its
    weights file), or None when ``weights`` is not a facerank base."""
    path = Path(weights)
    if path.is_dir():
        return path if (path / BASE_CONFIG).is_file() else None
    named_like_base = path.name == BASE_CONFIG or (path.name.startswith("base-")
                                                    and path.suffix == ".safetensors")
    if named_like_base and (path.parent / BASE_CONFIG).is_file():
        return path.parent
    return None


def read_base_config(folder: str | Path) -> BaseConfig:
    path = Path(folder) / BASE_CONFIG
    try:
        data = json.loads(path.read_text("utf-8"))
        if data.get("format") != BASE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, this facerank reads {BASE_FORMAT}")
        return BaseConfig.from_json(data)
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file; a base is the folder `facerank pretrain` "
                         "wrote") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise StoreError(f"{path}: not a readable facerank base ({error}); pretrain "
                         "again") from None


def read_base(folder: str | Path) -> tuple[dict, BaseConfig]:
    """(backbone state dict, config) of a base, its weights checked against the fingerprint.

    >>> weights, config = facerank.read_base("base/")     # written by `facerank pretrain`
    >>> config.image_size, config.faces.detector           # the preprocessing it expects
    (64, 'dlib-hog')
    >>> "layer4.2.conv3.weight" in weights, any(name.startswith("fc.") for name in weights)
    (True, False)

    A damaged weights file raises ``StoreMismatchError``; a folder that is no base, ``StoreError``.
    """
    from safetensors.torch import load as load_safetensors

    folder = Path(folder)
    config = read_base_config(folder)
    path = folder / config.weights_file
    try:
        data = path.read_bytes()
    except OSError as error:
        raise StoreError(f"{path}: cannot read the base's weights ({error.strerror})") from None
    if hashlib.sha256(data).hexdigest() != config.fingerprint:
        raise StoreMismatchError(f"{path} is damaged: it does not match the fingerprint in "
                                 f"{folder / BASE_CONFIG}; pretrain again (or resume)")
    try:
        return load_safetensors(data), config
    except Exception as error:  # safetensors raises its own error types
        raise StoreError(f"{path}: cannot read the base's weights ({error})") from None


def save_base(state: dict, config: BaseConfig, folder: str | Path) -> BaseConfig:
    """Write the weights under a name of their own, then ``base.json`` naming them: a crash
    leaves the old base or the new one, never a config describing other weights."""
    from safetensors.torch import save as save_safetensors

    from facerank import __version__

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()
             if not k.startswith("fc.")}
    data = save_safetensors(state)
    fingerprint = hashlib.sha256(data).hexdigest()
    config = replace(config, fingerprint=fingerprint, facerank_version=__version__,
                     weights_file=f"base-{fingerprint[:16]}.safetensors")
    previous = folder / BASE_CONFIG
    try:
        old_file = json.loads(previous.read_text("utf-8")).get("weights_file")
    except (OSError, ValueError, AttributeError):  # none yet, or damaged: nothing to clean up
        old_file = None
    atomic.write_bytes(folder / config.weights_file, data)
    atomic.write_json(previous, config.to_json())
    if old_file and old_file != config.weights_file:
        (folder / Path(old_file).name).unlink(missing_ok=True)
    return config


def differences(base: BaseConfig, *, image_size: int, crop: float, faces: FaceStep) -> list[str]:
    """How a fine-tuning run's preprocessing departs from the base's ([] when it does not).

    The no-face policy may differ: it decides which photos are used, not what a face looks like.
    """
    found = []
    if image_size != base.image_size:
        found.append(f"input size {image_size} px, the base's is {base.image_size} px")
    if crop != base.crop:
        found.append(f"crop {crop}, the base's is {base.crop}")
    for name in ("detector", "model_fingerprint", "eye_distance", "eye_height"):
        mine, theirs = getattr(faces, name), getattr(base.faces, name)
        if mine != theirs:
            found.append(f"face step {name} {mine or 'none'!s}, the base's is {theirs or 'none'!s}")
    return found
