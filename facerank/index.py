"""The FAISS index: vectors with stable integer ids, exact L2 search by default.

A thin layer so that the rest of facerank never touches FAISS types: numpy in, numpy out.
Distances are Euclidean (FAISS's L2 indexes report squared distances; we take the root).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from facerank import atomic

#: FAISS index-factory string used when none is given: exact search, no training, no surprises.
DEFAULT_FACTORY = "Flat"


class FaceIndex:
    """Vectors of one dimension under caller-chosen int64 ids; add, remove, search, save, load.

    >>> index = FaceIndex(dim=2048)
    >>> index.add(np.array([7, 8]), vectors)
    >>> distances, ids = index.search(query, k=5)
    """

    def __init__(self, dim: int, *, factory: str = DEFAULT_FACTORY):
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.factory = factory
        # IDMap2 keeps the ids we choose (record ids), and supports removal and reconstruction.
        self._index = faiss.IndexIDMap2(faiss.index_factory(dim, factory, faiss.METRIC_L2))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = self._check(vectors)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(ids) == 0:
            return
        if not self._index.is_trained:
            self._index.train(vectors)
        self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors by id; returns how many were removed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest ``k`` vectors per query: (Euclidean distances, ids), -1 ids where fewer exist."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = self._check(queries)
        squared, ids = self._index.search(queries, min(k, max(len(self), 1)))
        distances = np.sqrt(np.maximum(squared, 0.0))
        distances[ids < 0] = np.inf
        return distances, ids

    def reconstruct(self, record_id: int) -> np.ndarray:
        return self._index.reconstruct(int(record_id))

    def save(self, path: str | Path) -> None:
        atomic.write_with(path, lambda temporary: faiss.write_index(self._index, str(temporary)))

    @classmethod
    def load(cls, path: str | Path, *, factory: str = DEFAULT_FACTORY) -> "FaceIndex":
        raw = faiss.read_index(str(path))
        if not isinstance(raw, faiss.IndexIDMap2):
            raw = faiss.downcast_index(raw)
        if not isinstance(raw, faiss.IndexIDMap2):
            raise ValueError(f"{path} is a FAISS index without stable ids; rebuild it")
        index = cls.__new__(cls)
        index.dim = raw.d
        index.factory = factory
        index._index = raw
        return index

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        return vectors
