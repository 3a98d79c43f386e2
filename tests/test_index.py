"""FaceIndex against brute-force numpy: ids, distances, removal, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from facerank.index import FaceIndex


@pytest.fixture
def vectors():
    return np.random.default_rng(0).normal(size=(200, 64)).astype(np.float32)


def test_search_matches_brute_force_and_finds_itself(vectors):
    ids = np.arange(1000, 1200)
    index = FaceIndex(64)
    index.add(ids, vectors)
    distances, found = index.search(vectors[:20], k=5)
    assert (found[:, 0] == ids[:20]).all() and np.allclose(distances[:, 0], 0, atol=1e-3)
    brute = np.linalg.norm(vectors[:20, None] - vectors[None], axis=2)
    assert np.allclose(np.sort(brute, axis=1)[:, :5], distances, atol=1e-3)


def test_remove_and_reload_keep_ids(tmp_path, vectors):
    index = FaceIndex(64)
    index.add(np.arange(200) * 7, vectors)
    assert index.remove(np.array([0, 7, 99999])) == 2
    _, found = index.search(vectors[:2], k=1)
    assert 0 not in found and 7 not in found
    index.save(tmp_path / "i.faiss")
    loaded = FaceIndex.load(tmp_path / "i.faiss")
    assert len(loaded) == 198
    for a, b in zip(index.search(vectors, 3), loaded.search(vectors, 3)):
        assert np.array_equal(a, b)


def test_fewer_vectors_than_k_and_bad_shapes(vectors):
    index = FaceIndex(64)
    index.add(np.array([1, 2]), vectors[:2])
    distances, found = index.search(vectors[:1], k=10)
    assert found.shape == (1, 2)
    with pytest.raises(ValueError, match="shape"):
        index.search(vectors[:, :10], k=1)
    with pytest.raises(ValueError, match="k must"):
        index.search(vectors[:1], k=0)
