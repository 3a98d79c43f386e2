"""facerank: fine-tune ResNet50 on your own people, index its face prints, ask who and which.

    >>> import facerank
    >>> facerank.classify("photo.jpg", top_k=3)      # who is it
    >>> facerank.closest("photo.jpg", k=5)           # which gallery images are closest
    >>> facerank.identify("group.jpg")               # every face: box, who, closest
    >>> store = facerank.open("faces/")              # open once, query many times

The module-level functions use the default store: ``$FACERANK_STORE``, else ``./facerank-store``.
Importing facerank is cheap: torch, FAISS and the model load on first use.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# Public name → module that defines it. Loaded on first access (PEP 562) so that
# `import facerank` neither imports torch nor loads a model.
_EXPORTS = {
    "open": "facerank.api", "closest": "facerank.api", "classify": "facerank.api",
    "embed": "facerank.api", "identify": "facerank.api",
    "FaceAnswer": "facerank.store", "Face": "facerank.faces", "FaceStep": "facerank.faces",
    "draw_faces": "facerank.drawing", "NoFaceError": "facerank.errors",
    "default_store_path": "facerank.api",
    "FaceStore": "facerank.store", "Match": "facerank.store", "Prediction": "facerank.store",
    "ChangeReport": "facerank.store", "Record": "facerank.store",
    "Verification": "facerank.store", "calibrate": "facerank.calibrate",
    "Calibration": "facerank.calibrate", "diagnose": "facerank.doctor",
    "FaceModel": "facerank.model", "ModelConfig": "facerank.config",
    "FaceIndex": "facerank.index",
    "TrainConfig": "facerank.train", "PRESETS": "facerank.train", "preset": "facerank.train",
    "train": "facerank.train", "TrainResult": "facerank.train", "recipe": "facerank.train",
    "pretrain_recipe": "facerank.pretrain", "PretrainResult": "facerank.pretrain",
    "BaseConfig": "facerank.base", "read_base": "facerank.base",
    "evaluate": "facerank.evaluate", "Evaluation": "facerank.evaluate",
    "scan_gallery": "facerank.gallery", "split_gallery": "facerank.gallery",
    "load_image": "facerank.images",
    "FacerankError": "facerank.errors", "ImageError": "facerank.errors",
    "GalleryError": "facerank.errors", "StoreError": "facerank.errors",
    "StoreMismatchError": "facerank.errors", "StoreLockedError": "facerank.errors",
    "WeightsUnavailableError": "facerank.errors",
}

# What ``from facerank import *`` brings: not ``open`` (it would hide the built-in), and nothing
# whose module imports torch (training, the torch model, evaluation, calibration), so that a
# star import stays light. Every name above is still there as ``facerank.NAME``.
_NOT_STARRED = {"open", "train", "TrainConfig", "TrainResult", "PRESETS", "preset", "recipe",
                "pretrain_recipe", "PretrainResult", "FaceModel", "evaluate", "Evaluation",
                "calibrate", "Calibration"}
__all__ = sorted(set(_EXPORTS) - _NOT_STARRED) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'facerank' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(_EXPORTS) + ["__version__"]


class _Package(types.ModuleType):
    """``facerank`` itself. Importing a submodule sets it as an attribute of its package, so
    ``import facerank.train`` (done by facerank's own modules) would turn the exported function
    ``facerank.train`` into the module of the same name; this keeps the function. The modules
    stay importable by name: ``from facerank.train import recipe``."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
