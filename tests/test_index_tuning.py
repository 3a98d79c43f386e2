"""Index tuning against exact search, the store keeping what was tuned, sizes and latencies as
typed, and `index plan` from the measured figures."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from faiss.contrib.evaluation import knn_intersection_measure
from typer.testing import CliRunner

from facerank.cli.app import app
from facerank.search.index import FaceIndex
from facerank.search.tuning import _exact_ids, tune
from facerank.scale.plan import measured_costs, plan_scale
from facerank.store import FaceStore
from facerank.store.database import Database
from facerank.store.results import Record
from facerank.units import parse_latency, parse_size

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _clustered(rng, centres, count):
    """Unit vectors around shared centres: neighbours cross IVF cell borders, as faces do."""
    vectors = centres[rng.integers(0, len(centres), count)]
    vectors = vectors + rng.normal(size=vectors.shape).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def ivf():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(500, 64)).astype(np.float32)
    vectors = _clustered(rng, centres, 20_000)
    ids = np.arange(len(vectors), dtype=np.int64) + 1000
    index = FaceIndex(64, factory="IVF64,Flat")
    index.train(vectors[:index.plan.train_size])
    index.add(ids, vectors)
    return index, ids, vectors, _clustered(rng, centres, 300)


def test_tuned_recall_holds_on_fresh_queries_against_exact_search(ivf):
    index, ids, vectors, fresh = ivf
    tuning = tune(index, vectors[:200], vectors=(ids, vectors), query_ids=ids[:200],
                  target_recall=0.95)
    assert tuning.met and tuning.recall >= 0.95
    assert index.parameters == {"nprobe": tuning.parameters["nprobe"]}
    # Cheapest: the next smaller nprobe measured short of the target.
    smaller = [s for s in tuning.sweep if s.nprobe < tuning.parameters["nprobe"]]
    assert smaller and all(s.recall < 0.95 for s in smaller)
    _, found = index.search(fresh, 10)
    recall = knn_intersection_measure(found, _exact_ids(fresh, (ids, vectors), 10))
    assert recall >= 0.93  # the sample's estimate carries over to queries it never saw


def test_a_tight_latency_target_visits_fewer_lists(ivf):
    index, ids, vectors, _ = ivf
    accurate = tune(index, vectors[:200], vectors=(ids, vectors), query_ids=ids[:200],
                    target_recall=0.99)
    at_best = next(s for s in accurate.sweep if s.nprobe == accurate.parameters["nprobe"])
    fast = tune(index, vectors[:200], vectors=(ids, vectors), query_ids=ids[:200],
                target_latency_ms=at_best.p50_ms / 3)
    assert fast.parameters["nprobe"] < accurate.parameters["nprobe"]
    assert fast.recall < accurate.recall
    assert index.parameters["nprobe"] == fast.parameters["nprobe"]


def test_refined_indexes_tune_the_reranking_depth_too():
    rng = np.random.default_rng(1)
    vectors = _clustered(rng, rng.normal(size=(300, 64)).astype(np.float32), 17_000)
    ids = np.arange(len(vectors), dtype=np.int64)
    index = FaceIndex(64, factory="PCAR32,IVF64,PQ8np,Refine(SQ8)")
    index.train(vectors[:index.plan.train_size])
    index.add(ids, vectors)
    tuning = tune(index, vectors[:100], vectors=[(ids[:9000], vectors[:9000]),
                                                 (ids[9000:], vectors[9000:])],
                  query_ids=ids[:100], target_recall=0.9)
    assert tuning.met and set(tuning.parameters) == {"nprobe", "k_factor"}
    assert {s.k_factor for s in tuning.sweep} >= {2, 32}
    assert index.parameters == {"nprobe": tuning.parameters["nprobe"],
                                "k_factor_rf": tuning.parameters["k_factor"]}


def test_an_exact_index_has_nothing_to_tune():
    vectors = np.random.default_rng(2).normal(size=(50, 8)).astype(np.float32)
    index = FaceIndex(8)
    index.add(np.arange(50), vectors)
    tuning = tune(index, vectors[:10], vectors=(np.arange(50), vectors))
    assert tuning.parameters == {} and tuning.recall == 1.0 and tuning.sweep == ()


def _add_synthetic_vectors(store: FaceStore, count: int) -> None:
    """Records with vectors straight into the database (no photos): enough to train an IVF."""
    snapshot = store.snapshot()
    rng = np.random.default_rng(3)
    vectors = _clustered(rng, rng.normal(size=(64, snapshot.dim)).astype(np.float32),
                         count)
    with store.database.writing() as sql:
        ids = [Database.insert_record(sql, Record(0, f"/synthetic/{i}.jpg", f"p{i % 64}",
                                                  f"{i:064x}", 1, 1)) for i in range(count)]
        Database.insert_vectors(sql, snapshot.generation, ids, vectors)
        Database.log_added(sql, ids)
        Database.bump_version(sql)


def test_the_store_keeps_its_tuning_until_the_index_changes_kind(store_copy):
    store, _ = store_copy
    _add_synthetic_vectors(store, 4200)
    assert store.reindex(factory="IVF16,Flat", target_recall=0.9) == "IVF16,Flat"
    info = store.info()
    tuned = info["index_tuning"]
    assert tuned["recall"] >= 0.9 and tuned["met"] and tuned["queries"] == 200
    assert info["index_search_parameters"] == tuned["parameters"] == {
        "nprobe": tuned["parameters"]["nprobe"]}
    reopened = FaceStore.open(store.folder)  # applied on load, not only inside the file
    assert reopened.snapshot().base.parameters == tuned["parameters"]
    reopened.compact()  # same kind: kept
    assert FaceStore.open(store.folder).info()["index_search_parameters"] == tuned["parameters"]
    result = runner.invoke(app, ["index", "info", "--store", str(store.folder)])
    assert result.exit_code == 0, result.output
    assert f"nprobe={tuned['parameters']['nprobe']}" in result.output and "recall@10" in result.output
    store.reindex(factory="Flat")  # another kind: the tuning means nothing for it
    assert FaceStore.open(store.folder).info()["index_tuning"] is None


def test_index_build_refuses_a_memory_budget_too_small(store_copy):
    store, gallery = store_copy
    result = runner.invoke(app, ["index", "build", str(gallery), "--store", str(store.folder),
                                 "--memory", "100K"])
    assert result.exit_code == 2, result.output
    assert "too small" in result.output and "100K" in result.output
    result = runner.invoke(app, ["index", "build", str(gallery), "--store", str(store.folder),
                                 "--memory", "lots"])
    assert result.exit_code == 2 and "512M, 4G" in result.output
    result = runner.invoke(app, ["index", "build", str(gallery), "--store", str(store.folder),
                                 "--memory", "1G", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["index_factory"] == "Flat"
    assert FaceStore.open(store.folder).info()["index_memory_budget"] == 2**30


@pytest.mark.parametrize("text, expected", [
    ("512M", 512 * 2**20), ("4G", 4 * 2**30), ("4g", 4 * 2**30), ("4GiB", 4 * 2**30),
    ("4GB", 4 * 2**30), ("1.5T", int(1.5 * 2**40)), ("100K", 100 * 2**10), ("1048576", 2**20),
    (2**20, 2**20)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "4X", "G4", "-1G", "0", "four gigs", "4 G B"])
def test_parse_size_names_the_valid_forms(text):
    with pytest.raises(ValueError, match="512M, 4G, 1.5T|positive"):
        parse_size(text)


@pytest.mark.parametrize("text, expected", [
    ("5ms", 5.0), ("0.5ms", 0.5), ("500us", 0.5), ("500µs", 0.5), ("1s", 1000.0), ("2 MS", 2.0)])
def test_parse_latency(text, expected):
    assert parse_latency(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["5", "5 minutes", "ms", "-5ms", "0ms"])
def test_parse_latency_names_the_valid_forms(text):
    with pytest.raises(ValueError, match="5ms, 0.5ms, 200us|positive"):
        parse_latency(text)


def test_plan_for_100_million_faces_shards_and_quotes_its_measurement():
    result = runner.invoke(app, ["index", "plan", "--faces", "100000000", "--memory", "64G",
                                 "--hours", "24", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    for field in ("factory", "shards", "memory_per_shard_bytes", "memory_total_bytes",
                  "expected_recall", "expected_p50_ms", "embedding_hours", "workers", "nodes",
                  "measured", "extrapolated", "sources"):
        assert field in plan
    assert plan["shards"] > 1 and plan["extrapolated"]
    assert plan["memory_per_shard_bytes"] <= 64 * 2**30
    assert plan["memory_total_bytes"] == plan["shards"] * plan["memory_per_shard_bytes"]
    # Traceable: the recall quoted is a row of the benchmark's results, as measured there.
    results = json.loads((ROOT / "benchmarks/results/index_scale.json").read_text())
    rows = {(size["size"], row["factory"]): row for size in results["sizes"]
            for row in size["candidates"]}
    measured = rows[(plan["measured"]["faces"], plan["measured"]["factory"])]
    assert plan["expected_recall"] == measured["recall_at_10"]
    speed = json.loads((ROOT / "benchmarks/results/embedding_speed.json").read_text())
    per_worker = next(row["median"] for row in speed["end_to_end"] if row["size"] == 64)
    assert plan["embedding_hours"] == pytest.approx(1e8 / per_worker / 3600, abs=0.1)
    assert plan["build_hours"] <= 24
    text = runner.invoke(app, ["index", "plan", "--faces", "100000000", "--memory", "64G"])
    assert text.exit_code == 0 and "extrapolated" in text.output and "shard" in text.output


def test_the_packaged_figures_are_those_the_benchmarks_measured():
    spec = importlib.util.spec_from_file_location("plan_costs", ROOT / "benchmarks/plan_costs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    fresh = script.measured_costs(
        json.loads((ROOT / "benchmarks/results/index_scale.json").read_text()),
        json.loads((ROOT / "benchmarks/results/embedding_speed.json").read_text()))
    assert measured_costs() == fresh  # else: python benchmarks/plan_costs.py


def test_a_small_gallery_needs_one_node_and_a_size_never_measured_is_refused():
    plan = plan_scale(50_000, memory_budget_bytes=2**30)
    assert plan.shards == 1 and plan.factory.startswith("IVF") and plan.nodes == 1
    with pytest.raises(ValueError, match="measured: 64, 224"):
        plan_scale(50_000, memory_budget_bytes=2**30, image_size=100)
