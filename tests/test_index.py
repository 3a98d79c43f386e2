"""FaceIndex against brute-force numpy and exact Flat search: ids, distances, removal, save/load,
and every plan ``choose_index`` can return."""

from __future__ import annotations

import re

import faiss
import numpy as np
import pytest

from facerank.search import index as index_module
from facerank.search.index import FaceIndex, IndexPlan, choose_index


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
    _, found = index.search(vectors[:1], k=10)
    assert found.shape == (1, 2)
    with pytest.raises(ValueError, match="shape"):
        index.search(vectors[:, :10], k=1)
    with pytest.raises(ValueError, match="k must"):
        index.search(vectors[:1], k=0)


# -- plans ---------------------------------------------------------------------------------------

DIM, COUNT, PEOPLE = 64, 20_000, 400


@pytest.fixture(scope="module")
def faces():
    """Unit vectors clustered by person, like face prints: (ids, base, queries held out)."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(PEOPLE, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def views(n):
        x = centres[rng.integers(0, PEOPLE, n)] + 0.35 * rng.normal(size=(n, DIM)) / np.sqrt(DIM)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return np.arange(COUNT, dtype=np.int64) * 3 + 11, views(COUNT), views(100)


# The real thresholds are sized for 2048-d galleries of 10k+ faces; scaled down here so that
# 20k x 64-d vectors meet every kind of plan and the tests stay fast.
SMALL = {"EXACT_MAX_FLOATS": 2**16, "PCA_DIM": 32}

# (memory budget in bytes, the plan choose_index must give for it, (recall@10, top-1) bars
# against exact Flat search, how far a near-tie top-1 may be). No budget: the factory's default
# plan, for re-ranking codecs that choose_index gives only at scale (1M faces in 2 GiB get SQ6),
# where the float32 vectors waiting to train are a small part of the budget. 6-bit rounding
# blurs this 64-d data's many near-ties (neighbours within 0.005) more than 2048-d faces'.
PLAN_CASES = {
    "ivf-flat": (2**30, "IVF256,Flat", (0.97, 0.97), 0.0),
    "pca-ivfpq-sqfp16": (5 * 2**20, "PCAR32,IVF256,PQ4np,Refine(SQfp16)", (0.95, 0.9), 5e-3),
    "pca-ivfpq-sq8": (None, "PCAR32,IVF256,PQ4np,Refine(SQ8)", (0.95, 0.9), 5e-3),
    "pca-ivfpq-sq6": (None, "PCAR32,IVF256,PQ4np,Refine(SQ6)", (0.9, 0.8), 0.02),
}


def small_choice(budget: int) -> IndexPlan:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SMALL.items():
            patch.setattr(index_module, name, value)
        return choose_index(COUNT, DIM, memory_budget_bytes=budget)


def build(plan: IndexPlan, ids: np.ndarray, base: np.ndarray) -> FaceIndex:
    index = FaceIndex(DIM, plan=plan)
    for start in range(0, len(ids), 500):  # in small batches, as the store adds
        index.add(ids[start:start + 500], base[start:start + 500])
    return index


@pytest.fixture(scope="module")
def exact(faces):
    ids, base, queries = faces
    return build(IndexPlan(), ids, base).search(queries, 10)


@pytest.fixture(scope="module", params=list(PLAN_CASES))
def built(request, faces):
    """(plan, its index over the faces, bars, near-tie slack): built once per plan kind."""
    budget, factory, bars, tie = PLAN_CASES[request.param]
    if budget is None:
        plan = IndexPlan.for_factory(factory)
    else:
        plan = small_choice(budget)
        assert plan.factory == factory and plan.memory_bytes <= budget
    return plan, build(plan, *faces[:2]), bars, tie


def agreement(found: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    recall = np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact)])
    return float(recall), float(np.mean(found[:, 0] == exact[:, 0]))


def test_each_plan_agrees_with_exact_search(faces, exact, built):
    ids, base, queries = faces
    _, index, (recall_bar, top1_bar), tie = built
    assert not index.is_exact and len(index) == COUNT
    assert sorted(index.ids.tolist()) == ids.tolist()
    true_distances, true_ids = exact
    distances, found = index.search(queries, 10)
    recall, top1 = agreement(found, true_ids)
    assert recall >= recall_bar and top1 >= top1_bar, (recall, top1)
    # Where the top-1 differs it is a near-tie: re-ranking from 6-8 bit codes cannot split
    # neighbours whose distances differ by less than its rounding, but never returns a far one.
    position = {record_id: row for row, record_id in enumerate(ids)}
    chosen = base[[position[record_id] for record_id in found[:, 0]]]
    assert (np.linalg.norm(chosen - queries, axis=1) <= true_distances[:, 0] + tie + 1e-5).all()
    # Distances are Euclidean: the reported ones are close to the exact ones.
    same = found[:, 0] == true_ids[:, 0]
    assert np.allclose(distances[same, 0], true_distances[same, 0], atol=0.02)
    assert np.allclose(index.reconstruct(ids[5]), base[5], atol=0.02)


def test_memory_estimate_is_close_to_the_built_index(built):
    plan, index, *_ = built
    if not plan.memory_bytes:
        pytest.skip("a plan made from a factory string carries no estimate")
    serialized = len(faiss.serialize_index(index._index))
    # Besides what the file holds, the estimate counts what lives only in memory: the id hash
    # maps and, for IVF-PQ, the precomputed table of nlist x m x 256 floats.
    nlist, pq = index_module._nlist_of(plan.factory), re.search(r"PQ(\d+)", plan.factory)
    in_memory_only = 2 * COUNT * index_module.ID_BYTES + (nlist * int(pq[1]) * 256 * 4 if pq else 0)
    assert serialized <= plan.memory_bytes <= 1.1 * serialized + in_memory_only, serialized


def test_each_plan_removes_and_reloads_with_its_parameters(faces, tmp_path, built):
    ids, base, queries = faces
    plan = built[0]
    index = build(plan, ids, base)
    assert index.parameters == plan.search_parameters
    gone = ids[:50]
    assert index.remove(np.concatenate([gone, [-5]])) == 50
    assert len(index) == COUNT - 50
    _, found = index.search(base[:50], 5)
    assert not np.isin(found, gone).any()
    index.add(gone[:3], base[:3])  # a removed id may come back
    assert index.search(base[:3], 1)[1][:, 0].tolist() == gone[:3].tolist()

    index.set_search_parameters(nprobe=24)
    index.save(tmp_path / "i.faiss")
    loaded = FaceIndex.load(tmp_path / "i.faiss", factory=plan.factory)
    assert loaded.parameters == {**plan.search_parameters, "nprobe": 24}
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        assert np.array_equal(a, b)
    # A plan given to load is applied over what the file says.
    reloaded = FaceIndex.load(tmp_path / "i.faiss", plan=plan)
    assert reloaded.parameters == plan.search_parameters


def test_too_few_vectors_to_train_stay_exact_until_there_are_enough(faces, exact, tmp_path):
    ids, base, queries = faces
    plan = small_choice(PLAN_CASES["ivf-flat"][0])
    assert 0 < plan.train_size < COUNT
    index, flat = FaceIndex(DIM, plan=plan), FaceIndex(DIM)
    held = plan.train_size - 1
    for start in range(0, held, 32):
        stop = min(start + 32, held)
        index.add(ids[start:stop], base[start:stop])
        flat.add(ids[start:stop], base[start:stop])
    assert index.is_exact
    for a, b in zip(index.search(queries, 10), flat.search(queries, 10)):
        assert np.array_equal(a, b)
    # Saved while waiting, loaded with the factory: it still trains once enough have arrived.
    index.save(tmp_path / "waiting.faiss")
    loaded = FaceIndex.load(tmp_path / "waiting.faiss", factory=plan.factory)
    assert loaded.is_exact and loaded.plan.train_size == plan.train_size
    loaded.add(ids[held:], base[held:])
    assert not loaded.is_exact and len(loaded) == COUNT
    assert loaded.parameters == plan.search_parameters
    assert agreement(loaded.search(queries, 10)[1], exact[1])[0] >= 0.95


def test_choose_index_is_exact_for_small_galleries_and_respects_the_budget():
    assert choose_index(0, 2048).factory == "Flat"
    assert choose_index(400, 2048).factory == "Flat"
    assert choose_index(8_000, 2048).factory == "Flat"
    assert choose_index(100_000, 2048).factory.startswith("IVF")
    for count in (10_000, 100_000, 1_000_000, 5_000_000):
        for budget in (2**28, 2**30, 2 * 2**30, 16 * 2**30):
            try:
                plan = choose_index(count, 2048, memory_budget_bytes=budget)
            except ValueError as error:
                assert "memory_budget_bytes" in str(error)
                continue
            assert plan.memory_bytes <= budget, (count, budget, plan)
            assert "HNSW" not in plan.factory  # it cannot remove
            assert plan.train_size <= count or plan.factory == "Flat"
            assert plan.reason
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        choose_index(10_000_000, 2048, memory_budget_bytes=2**20)
    with pytest.raises(ValueError, match="count"):
        choose_index(-1, 2048)


def test_unremovable_and_invalid_factories_say_what_to_do(vectors):
    hnsw = FaceIndex(64, factory="HNSW16")
    hnsw.add(np.arange(200), vectors)
    assert hnsw.parameters == {"efSearch": 64}
    assert (hnsw.search(vectors[:5], 1)[1][:, 0] == np.arange(5)).all()
    with pytest.raises(ValueError, match="cannot remove"):
        hnsw.remove(np.array([1]))
    with pytest.raises(ValueError, match="factory string"):
        FaceIndex(64, factory="IVFbanana")
    with pytest.raises(ValueError, match="disagree"):
        FaceIndex(64, factory="HNSW16", plan=IndexPlan(factory="Flat"))


def test_train_on_a_sample_moves_what_was_held(faces, exact):
    ids, base, queries = faces
    plan = small_choice(PLAN_CASES["ivf-flat"][0])
    index = FaceIndex(DIM, plan=plan)
    index.add(ids[:100], base[:100])
    with pytest.raises(ValueError, match="at least"):
        index.train(base[:10])
    index.train(base[::-1][:plan.train_size])
    assert not index.is_exact and len(index) == 100
    index.add(ids[100:], base[100:])
    assert agreement(index.search(queries, 10)[1], exact[1])[0] >= 0.95
    with pytest.raises(ValueError, match="already trained"):
        index.train(base)


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,PQ8np",
                                     "PCAR32,IVF16,PQ4np,Refine(SQ8)"])
def test_shards_filled_apart_and_merged_answer_as_one_build(factory):
    """What a distributed build does (facerank.scale.index_build): one trained, empty index
    sent as bytes, shards of consecutive ids filled from copies, merged in order."""
    dim, count = 64, 20_000
    vectors = np.random.default_rng(3).standard_normal((count, dim)).astype(np.float32)
    plan = IndexPlan.for_factory(factory)
    merged = FaceIndex(dim, plan=plan)
    if plan.train_size:
        merged.train(vectors[:plan.train_size])
    empty = merged.to_bytes()
    whole = FaceIndex.from_bytes(empty, plan=plan)
    whole.add(np.arange(count), vectors)
    shards = []
    for start in range(0, count, 7_000):
        shard = FaceIndex.from_bytes(empty, plan=plan)
        shard.add(np.arange(start, min(start + 7_000, count)), vectors[start:start + 7_000])
        shards.append(FaceIndex.from_bytes(shard.to_bytes(), plan=plan))
    merged.merge(shards)
    queries = vectors[::400] + 0.01
    assert len(merged) == count
    for (d_a, i_a), (d_b, i_b) in [(whole.search(queries, 10), merged.search(queries, 10))]:
        assert np.array_equal(i_a, i_b) and np.allclose(d_a, d_b)
    # The merged index keeps working as any other: removal, reconstruction.
    assert merged.remove(np.arange(100)) == 100
    assert not np.isin(merged.search(queries, 10)[1], np.arange(100)).any()
    np.testing.assert_allclose(merged.reconstruct(500), whole.reconstruct(500), rtol=1e-6)


def test_merge_refuses_another_kind_of_index():
    flat, ivf = FaceIndex(8), FaceIndex(8, factory="IVF4,Flat")
    with pytest.raises(ValueError, match="cannot merge"):
        flat.merge([ivf])
