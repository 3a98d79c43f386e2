"""Module-level ``closest`` / ``classify`` / ``embed`` over a default store.

The default store is ``$FACERANK_STORE`` if set, else ``./facerank-store``. Stores are opened
once and cached per folder: a cached store picks up other processes' writes by itself, and one
whose model was retrained since is opened again on the next call.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from facerank.data.images import ImageInput
from facerank.store import FaceAnswer, FaceStore, Match, Prediction
from facerank.model.config import CONFIG_FILE

DEFAULT_STORE = "facerank-store"
_cache: dict[str, tuple[tuple, FaceStore]] = {}
_cache_lock = threading.Lock()


def default_store_path() -> Path:
    """``$FACERANK_STORE``, else ``./facerank-store``."""
    return Path(os.environ.get("FACERANK_STORE") or DEFAULT_STORE)


def open(store: str | Path | None = None, *, device: str = "cpu") -> FaceStore:  # noqa: A001
    """Open a store (cached per folder; re-opened when its model changed on disk).

    >>> store = facerank.open("faces/")
    >>> store.closest("photo.jpg", k=3)
    """
    folder = Path(store) if store is not None else default_store_path()
    key = str(folder.resolve())
    stamp = (_mtime(folder / CONFIG_FILE), device)
    with _cache_lock:
        cached = _cache.get(key)
        if cached and cached[0] == stamp:
            return cached[1]
        opened = FaceStore.open(folder, device=device)
        _cache[key] = (stamp, opened)
        return opened


def closest(image: ImageInput | Sequence[ImageInput], *, k: int = 5,
            store: str | Path | None = None) -> list[Match] | list[list[Match]]:
    """The ``k`` gallery images nearest to ``image`` (Euclidean distance on face prints).

    >>> facerank.closest("photo.jpg", k=2)
    [Match(rank=0, person='s7', distance=0.38, path='.../s7/3.pgm', id=61), Match(rank=1, ...)]
    """
    return open(store).closest(image, k=k)


def classify(image: ImageInput | Sequence[ImageInput], *, top_k: int = 5,
             store: str | Path | None = None) -> list[Prediction] | list[list[Prediction]]:
    """The ``top_k`` most probable people for ``image``, with softmax probabilities.

    >>> facerank.classify("photo.jpg", top_k=2)
    [Prediction(rank=0, person='s7', probability=0.97), Prediction(rank=1, ...)]
    """
    return open(store).classify(image, top_k=top_k)


def identify(image: ImageInput | Sequence[ImageInput], *, k: int = 5, top_k: int = 5,
             store: str | Path | None = None) -> list[FaceAnswer] | list[list[FaceAnswer]]:
    """Every face in ``image``, largest first: its box and landmarks, the ``top_k`` people, the
    ``k`` closest gallery images and, once calibrated, whether it is unknown.

    >>> [(face.box, face.people[0].person) for face in facerank.identify("group.jpg")]
    [((412, 88, 505, 181), 's7'), ((130, 102, 207, 179), 's2')]
    """
    return open(store).identify(image, k=k, top_k=top_k)


def embed(image: ImageInput | Sequence[ImageInput], *, store: str | Path | None = None
          ) -> np.ndarray:
    """The face print(s) of ``image`` as stored in the index: (2048,) or (n, 2048) float32.

    >>> facerank.embed(["a.jpg", "b.jpg"]).shape
    (2, 2048)
    """
    return open(store).embed(image)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
