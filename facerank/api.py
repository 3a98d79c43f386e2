"""Module-level ``closest`` / ``classify`` / ``identify`` / ``embed`` over a default store.

Each takes one image or many, as sentence-transformers' ``encode`` does (see ``FaceStore.embed``).

The default store is ``$FACERANK_STORE`` if set, else ``./facerank-store``. Stores are opened
once and cached per folder: a cached store picks up other processes' writes by itself, and one
whose model was retrained since is opened again on the next call.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from facerank.data.images import ImageInputs
from facerank.store import FaceAnswer, FaceStore, Match, Prediction
from facerank.model.config import CONFIG_FILE

DEFAULT_STORE = "facerank-store"
_cache: dict[str, tuple[tuple, FaceStore]] = {}
_cache_lock = threading.Lock()


def default_store_path() -> Path:
    """``$FACERANK_STORE``, else ``./facerank-store``: where the module-level functions look.

    >>> facerank.default_store_path()          # $FACERANK_STORE names the examples' store
    PosixPath('.../faces')
    """
    return Path(os.environ.get("FACERANK_STORE") or DEFAULT_STORE)


def open(store: str | Path | None = None, *, device: str = "cpu") -> FaceStore:  # noqa: A001
    """Open a store (cached per folder; re-opened when its model changed on disk).

    >>> store = facerank.open("faces/")
    >>> len(store.closest("photo.jpg", k=3))
    3
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


def closest(images: ImageInputs, *, k: int = 5, batch_size: int = 32,
            show_progress: bool = False, store: str | Path | None = None
            ) -> list[Match] | list[list[Match]]:
    """The ``k`` gallery images nearest to an image (Euclidean distance on face prints); for
    many images (a list, generator, any iterable or an N x H x W x 3 array), a list per image,
    read ``batch_size`` at a time.

    >>> facerank.closest("photo.jpg", k=2)
    [Match(rank=0, person='s1', distance=..., path='.../s1/...', id=...), Match(rank=1, ...)]
    >>> [len(matches) for matches in facerank.closest(["a.jpg", "b.jpg"], k=3)]
    [3, 3]
    """
    return open(store).closest(images, k=k, batch_size=batch_size, show_progress=show_progress)


def classify(images: ImageInputs, *, top_k: int = 5, batch_size: int = 32,
             show_progress: bool = False, store: str | Path | None = None
             ) -> list[Prediction] | list[list[Prediction]]:
    """The ``top_k`` most probable people for an image, with softmax probabilities; for many
    images, a list per image.

    >>> facerank.classify("photo.jpg", top_k=2)
    [Prediction(rank=0, person=..., probability=...), Prediction(rank=1, ...)]
    """
    return open(store).classify(images, top_k=top_k, batch_size=batch_size,
                                show_progress=show_progress)


def identify(images: ImageInputs, *, k: int = 5, top_k: int = 5, every: bool = True,
             batch_size: int = 32, show_progress: bool = False,
             store: str | Path | None = None) -> list[FaceAnswer] | list[list[FaceAnswer]]:
    """Every face in an image, largest first: its box and landmarks, the ``top_k`` people, the
    ``k`` closest gallery images and, once calibrated, whether it is unknown; for many images,
    a list per image. ``every=False``: the largest face only.

    >>> [(face.box, face.people[0].person) for face in facerank.identify("group.jpg")]
    [((...), '...'), ((...), '...')]
    """
    return open(store).identify(images, k=k, top_k=top_k, every=every, batch_size=batch_size,
                                show_progress=show_progress)


def embed(images: ImageInputs, *, batch_size: int = 32, show_progress: bool = False,
          store: str | Path | None = None) -> np.ndarray:
    """The face print of an image as stored in the index, ``(2048,)`` float32; for many images
    (a list, generator, any iterable or an N x H x W x 3 array) ``(n, 2048)``, read
    ``batch_size`` at a time so that memory follows the batch, not the input's length.

    >>> facerank.embed("a.jpg").shape, facerank.embed(["a.jpg", "b.jpg"]).shape
    ((2048,), (2, 2048))
    >>> facerank.distance(facerank.embed(["a.jpg", "b.jpg"]), facerank.embed("c.jpg"))
    array([..., ...], dtype=float32)
    """
    return open(store).embed(images, batch_size=batch_size, show_progress=show_progress)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
