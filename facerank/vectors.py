"""Small pure helpers over face prints (numpy arrays): how far apart, and the same person or not.

The face_recognition pair ``face_distance`` / ``compare_faces``, for vectors from
``facerank.embed`` or ``store.embed``. Nothing but numpy: a star import stays light.

    >>> import numpy as np
    >>> known = np.array([[0.0, 0.0], [3.0, 4.0]])
    >>> facerank.distance(known, np.array([0.0, 0.0]))
    array([0., 5.])
    >>> facerank.compare(known, np.array([0.0, 0.0]), threshold=1.0)
    array([ True, False])
"""

from __future__ import annotations

import math

import numpy as np

from facerank.errors import UsageError


def distance(known, candidate) -> np.ndarray | float:
    """Euclidean distances from ``candidate`` (one vector, 1-D) to each row of ``known``.

    ``known`` is one vector (1-D: the answer is a float) or many (2-D, one per row, or a list of
    vectors: the answer is an array, one distance per row; an empty list gives an empty array).
    The distance is the one ``store.verify`` and the index use.

    >>> facerank.distance([[1.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    array([1., 0.])
    >>> facerank.distance([3.0, 4.0], [0.0, 0.0])
    5.0
    >>> facerank.distance([1.0, 2.0, 3.0], [1.0, 2.0])
    Traceback (most recent call last):
    ...
    facerank.errors.UsageError: known vectors have 3 values and the candidate 2: shapes (3,) and (2,)
    """
    known, candidate = _as_vectors(known), _as_vectors(candidate)
    if candidate.ndim != 1 or candidate.size == 0:
        raise UsageError(f"candidate must be one vector (1-D, not empty), got shape "
                         f"{candidate.shape}")
    if known.ndim == 1 and known.size == 0:  # an empty list: no known vectors
        known = known.reshape(0, candidate.shape[0])
    if known.ndim not in (1, 2):
        raise UsageError(f"known must be one vector (1-D) or one per row (2-D), got shape "
                         f"{known.shape}")
    if known.shape[-1] != candidate.shape[0]:
        raise UsageError(f"known vectors have {known.shape[-1]} values and the candidate "
                         f"{candidate.shape[0]}: shapes {known.shape} and {candidate.shape}")
    distances = np.linalg.norm(known - candidate, axis=-1)
    return float(distances) if known.ndim == 1 else distances


def compare(known, candidate, *, threshold: float) -> np.ndarray | bool:
    """Whether each row of ``known`` is the same person as ``candidate``: distance at or under
    ``threshold`` (``store.threshold``, set by ``facerank calibrate``). One bool per row, or
    one bool for a 1-D ``known``; ``store.verify(a, b).same`` is this for two photos.

    >>> facerank.compare([[0.0, 0.0], [0.0, 2.0]], [0.0, 1.0], threshold=1.0)
    array([ True,  True])
    >>> facerank.compare([0.0, 2.5], [0.0, 1.0], threshold=1.0)
    False
    """
    if threshold is None:
        raise UsageError("threshold is None: calibrate the store (`facerank calibrate`) and "
                         "pass store.threshold, or give a distance")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    if not math.isfinite(threshold) or threshold < 0:
        raise UsageError(f"threshold must be a finite distance of 0 or more, got {threshold}")
    return distance(known, candidate) <= threshold


def _as_vectors(values) -> np.ndarray:
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"expected numbers (a numpy array or a list of them), got an array of "
                        f"{array.dtype}")
    # float32 face prints stay float32 (as the index holds them); integers are made floats.
    return array if np.issubdtype(array.dtype, np.floating) else array.astype(np.float64)
