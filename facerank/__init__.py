"""facerank: fine-tune ResNet50 on your own people, index its face prints, ask who and which.

    >>> import facerank
    >>> facerank.classify("photo.jpg", top_k=3)      # who is it
    >>> facerank.closest("photo.jpg", k=5)           # which gallery images are closest
    >>> facerank.identify("group.jpg")               # every face: box, who, closest
    >>> store = facerank.open("faces/")              # open once, query many times
    >>> facerank.distance(store.embed(["a.jpg", "b.jpg"]), store.embed("c.jpg"))  # face prints

The module-level functions use the default store: ``$FACERANK_STORE``, else ``./facerank-store``.
Importing facerank is cheap: torch, FAISS and the model load on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name → module that defines it. Loaded on first access (PEP 562) so that
# `import facerank` neither imports torch nor loads a model.
_EXPORTS = {
    # The questions, over the default store or one opened once (facerank.api, the store)
    "open": "facerank.api", "closest": "facerank.api", "classify": "facerank.api",
    "embed": "facerank.api", "identify": "facerank.api", "default_store_path": "facerank.api",
    "FaceStore": "facerank.store",
    # What they answer with (facerank.store.results)
    "FaceAnswer": "facerank.store", "PhotoAnswer": "facerank.store",
    "PhotoPeople": "facerank.store", "PhotoMatches": "facerank.store",
    "PhotoFaces": "facerank.store", "Match": "facerank.store", "Prediction": "facerank.store",
    "Verification": "facerank.store", "ChangeReport": "facerank.store", "Record": "facerank.store",
    # Face prints compared without a store
    "distance": "facerank.vectors", "compare": "facerank.vectors",
    # Inputs and faces
    "load_image": "facerank.data.images", "scan_gallery": "facerank.data.gallery",
    "split_gallery": "facerank.data.gallery",
    "Face": "facerank.faces.detection", "FaceStep": "facerank.faces.detection",
    "draw_faces": "facerank.faces.drawing",
    # The network, the index, training and quality
    "FaceModel": "facerank.model.torch_model", "ModelConfig": "facerank.model.config",
    "BaseConfig": "facerank.model.base", "read_base": "facerank.model.base",
    "FaceIndex": "facerank.search.index",
    "TrainConfig": "facerank.training.recipes", "PRESETS": "facerank.training.recipes",
    "preset": "facerank.training.recipes", "recipe": "facerank.training.recipes",
    "pretrain_recipe": "facerank.training.recipes",
    "train": "facerank.training.loop", "TrainResult": "facerank.training.loop",
    "PretrainResult": "facerank.training.pretrain",
    "evaluate": "facerank.quality.evaluate", "Evaluation": "facerank.quality.evaluate",
    "calibrate": "facerank.quality.calibrate", "Calibration": "facerank.quality.calibrate",
    "diagnose": "facerank.quality.doctor",
    # Errors
    "FacerankError": "facerank.errors", "UsageError": "facerank.errors",
    "MissingExtraError": "facerank.errors", "ImageError": "facerank.errors",
    "NoFaceError": "facerank.errors", "GalleryError": "facerank.errors",
    "StoreError": "facerank.errors", "StoreMismatchError": "facerank.errors",
    "StoreLockedError": "facerank.errors", "WeightsUnavailableError": "facerank.errors",
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
