"""What a trained model is, without the network: its config, preprocessing and file names.

Torch-free on purpose: the query path (store, CLI, ONNX Runtime) reads ``model.json`` and
resizes images exactly as training did without paying for ``import torch``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from facerank.errors import StoreError
from facerank.faces.detection import FaceStep

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EMBEDDING_DIM = 2048
CONFIG_FILE = "model.json"


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network and feed it, saved as ``model.json``."""

    people: tuple[str, ...]          # the head's classes, in logit order
    image_size: int = 224            # images are resized to image_size x image_size
    crop: float = 1.0                # first, a centred square of this share of the shorter side
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel normalisation after /255
    std: tuple[float, float, float] = IMAGENET_STD
    normalize_embeddings: bool = True  # L2-normalise avg_pool vectors (see README, "Embeddings")
    weights_origin: str = "none"     # what the backbone started from: imagenet:..., file:..., none
    arch: str = "resnet50"
    head: str = "linear"             # "linear" (softmax) or "cosine" (see model.CosineHead)
    head_scale: float = 0.0          # the cosine head's logit scale
    embedding_dim: int = EMBEDDING_DIM
    weights_file: str = ""           # file name of the weights inside the store
    fingerprint: str = ""            # sha256 of that file; indexes record it to refuse mixing
    onnx_file: str = ""              # the same network exported for ONNX Runtime ("" = none)
    onnx_fingerprint: str = ""       # sha256 of the ONNX file, checked before it is used
    precision: str = "fp32"          # what queries and indexing run in: "fp32" or "int8"
    int8_file: str = ""              # the ONNX model quantised to int8 (see facerank.model.precision)
    int8_fingerprint: str = ""       # sha256 of that file
    facerank_version: str = ""       # the version that saved it
    faces: FaceStep = FaceStep()     # how faces are found and aligned first (see facerank.faces.detection)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def identity(self) -> str:
        """What an index's vectors depend on: the weights *and* how images are fed to them.

        Two configs with the same identity embed every image identically; an index records the
        identity of the model that filled it.
        """
        parts = [self.fingerprint, self.arch, self.image_size, list(self.mean), list(self.std),
                 self.normalize_embeddings, self.embedding_dim]
        if self.crop != 1.0:  # appended only when set, so older stores keep their identity
            parts.append(self.crop)
        if self.precision != "fp32":  # int8 vectors are not fp32's: they fill their own index
            parts.append(self.precision)
        if self.faces.enabled:  # aligned faces are another input than whole frames
            parts.append(self.faces.identity_parts())
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    @classmethod
    def from_json(cls, data: dict) -> "ModelConfig":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        for name in ("people", "mean", "std"):
            known[name] = tuple(known[name])
        known["faces"] = FaceStep.from_json(known.get("faces"))
        return cls(**known)


def resize_for_model(image: Image.Image, size: int, crop: float = 1.0) -> np.ndarray:
    """The one resize every path uses (training, indexing, queries): H x W x 3 uint8.

    With ``crop`` < 1 a centred square of that share of the shorter side is kept first: aligned
    face crops such as LFW's frame the face with as much background again around it.
    """
    box = centre_square(*image.size, crop) if crop < 1.0 else None
    return np.asarray(image.resize((size, size), Image.BILINEAR, box=box, reducing_gap=3.0))


def centre_square(width: int, height: int, crop: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the centred square of ``crop`` x the shorter side."""
    side = crop * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def join_answers(config: ModelConfig, vectors: list[np.ndarray], probabilities: list[np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per-batch (embeddings, probabilities) joined; the right empty shapes for no images."""
    if not vectors:
        return (np.zeros((0, config.embedding_dim), np.float32),
                np.zeros((0, len(config.people)), np.float32))
    return np.concatenate(vectors), np.concatenate(probabilities)


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    try:
        return ModelConfig.from_json(json.loads(path.read_text("utf-8")))
    except FileNotFoundError:
        raise StoreError(f"no model in {Path(folder)}: run `facerank train GALLERY --store "
                         f"{Path(folder)}` first") from None
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise StoreError(f"{path}: damaged model config ({error}); train the store again"
                         ) from None
