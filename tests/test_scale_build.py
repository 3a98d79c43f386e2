"""A gallery indexed on a Ray cluster (a local one the tests start: 2 CPUs, no GPU) matches the
local build: same records, same vectors, same answers; a worker killed mid-build loses nothing.

200 ORL photos (20 people x 10) from ``../shared/data``, embedded by the session's small model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facerank.cli.app import app
from facerank.search.index import FaceIndex, IndexPlan
from facerank.store import FaceStore
from facerank.store.database import Database
from facerank.store.ingest import build_index_file

ray = pytest.importorskip("ray", reason="needs the ray extra")

from facerank.scale import RayEngine  # noqa: E402
from facerank.scale.index_build import build_index_file_on_ray  # noqa: E402

ORL = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl"
PEOPLE = [f"s{i}" for i in range(11, 31)]

pytestmark = pytest.mark.skipif(not ORL.is_dir(), reason=f"needs the ORL faces at {ORL}")


def _orl(folder: Path, people: list[str], names: dict | None = None) -> Path:
    for person in people:
        shutil.copytree(ORL / person, folder / (names or {}).get(person, person))
    return folder


@pytest.fixture(scope="module")
def orl_200(tmp_path_factory) -> Path:
    # One person's folder named with a space and a '#', as people's folders are.
    return _orl(tmp_path_factory.mktemp("orl200"), PEOPLE, {"s11": "Mary Ann #11"})


def _fresh_store(trained, destination: Path) -> FaceStore:
    shutil.copytree(trained[0], destination)
    return FaceStore.open(destination)


def _local(path: str) -> str:
    return path.removeprefix("file://")


def _vectors_by_path(store: FaceStore) -> dict[str, np.ndarray]:
    snapshot = store.snapshot()
    records = {r.id: _local(r.path) for r in store.records}
    with store.database.reading() as sql:
        ids, vectors = Database.vectors(sql, snapshot.generation, list(records), snapshot.dim)
    return {records[int(i)]: vector for i, vector in zip(ids, vectors)}


@pytest.fixture(scope="module")
def builds(tmp_path_factory, trained, orl_200, ray_cluster):
    """(local store, Ray store, their change reports) of the same 200 photos."""
    root = tmp_path_factory.mktemp("builds")
    local = _fresh_store(trained, root / "local")
    local_report = local.sync_folder(orl_200)
    on_ray = _fresh_store(trained, root / "ray")
    # Given as a URI, the gallery is listed and read through pyarrow, as s3:// or gs:// would
    # be. A space in a person's folder name stays a space (no URL parsing).
    report = on_ray.sync_folder(orl_200.as_uri(), engine=RayEngine(workers=2, batch_size=16))
    return local, on_ray, report, local_report


def test_ray_build_embeds_like_the_local_build(builds):
    local, on_ray, report, local_report = builds
    assert report.added == len(on_ray) == len(local) > 150
    ours, theirs = _vectors_by_path(on_ray), _vectors_by_path(local)
    assert set(ours) == set(theirs)
    for path, vector in ours.items():
        other = theirs[path]
        cosine = float(vector @ other / (np.linalg.norm(vector) * np.linalg.norm(other)))
        assert cosine >= 0.9999, path
    # The photos a build could not use are the same, for the same reasons.
    assert sorted((_local(p), why) for p, why in report.skipped) == sorted(local_report.skipped)
    assert sorted(map(_local, report.no_face)) == sorted(local_report.no_face)


def test_ray_build_answers_like_the_local_build(builds):
    """Every stored face as a query: the same top-5 photos from both stores."""
    local, on_ray, *_ = builds
    queries = _vectors_by_path(local)
    ours = on_ray.search_vectors(np.stack(list(queries.values())), k=5)
    theirs = local.search_vectors(np.stack(list(queries.values())), k=5)
    for path, mine, other in zip(queries, ours, theirs):
        assert [_local(m.path) for m in mine] == [m.path for m in other], path
        assert _local(mine[0].path) == path  # a gallery photo finds itself first


def test_a_rerun_from_the_cli_embeds_nothing_already_committed(builds, orl_200, tmp_path):
    _, on_ray, *_ = builds
    before = len(on_ray)
    result = CliRunner().invoke(app, ["index", "build", orl_200.as_uri(), "--store",
                                      str(on_ray.folder), "--ray", "auto", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["added"], report["updated"], report["unchanged"]) == (0, 0, before)
    assert len(on_ray) == before
    # and the CLI's export holds every face with the vector the store searches
    result = CliRunner().invoke(app, ["index", "export", str(tmp_path / "faces.parquet"),
                                      "--store", str(on_ray.folder), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == before


def test_a_uri_gallery_without_ray_says_what_to_do(trained, tmp_path):
    result = CliRunner().invoke(app, ["index", "build", "s3://bucket/photos/", "--store",
                                      str(trained[0])])
    assert result.exit_code == 2
    assert "--ray" in result.output


def test_ray_index_build_answers_like_the_local_one(builds):
    """An IVF index trained once, filled by Ray tasks in shards and merged, is the local one."""
    _, on_ray, *_ = builds
    snapshot = on_ray.snapshot()
    plan = IndexPlan(factory="IVF4,Flat", nprobe=2, train_size=150)
    here = build_index_file(on_ray.folder, on_ray.database, snapshot.generation, plan, 0)
    there = build_index_file_on_ray(on_ray.folder, on_ray.database, snapshot.generation, plan, 0,
                                    shard_size=50)
    a = FaceIndex.load(on_ray.folder / here, plan=plan)
    b = FaceIndex.load(on_ray.folder / there, plan=plan)
    vectors = np.stack(list(_vectors_by_path(on_ray).values()))
    assert len(a) == len(b) == len(vectors)
    distances_a, ids_a = a.search(vectors, 5)
    distances_b, ids_b = b.search(vectors, 5)
    assert np.array_equal(ids_a, ids_b)
    assert np.allclose(distances_a, distances_b)


def _embedder_pids() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"_Embedder" in command:
                found.append(int(entry))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's worker processes in /proc")
def test_a_killed_worker_is_retried_and_nothing_is_lost_or_doubled(trained, ray_cluster,
                                                                    tmp_path):
    gallery = _orl(tmp_path / "gallery", PEOPLE[:8])
    store = _fresh_store(trained, tmp_path / "store")
    outcome = {}

    def build():
        try:
            outcome["report"] = store.sync_folder(
                gallery, engine=RayEngine(workers=2, batch_size=4, commit_every=8))
        except BaseException as error:  # reported by the test below
            outcome["error"] = error

    builder = threading.Thread(target=build)
    builder.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and builder.is_alive() and time.monotonic() < deadline:
        with store.database.reading() as sql:
            committed = Database.count(sql)
        pids = _embedder_pids()
        if committed and pids:  # mid-build: some batches committed, actors at work
            os.kill(pids[0], signal.SIGKILL)
            killed = (pids[0], committed)
        time.sleep(0.05)
    builder.join(timeout=300)
    assert killed is not None, "the build ended before a worker could be killed"
    assert "error" not in outcome, outcome.get("error")
    assert killed[1] < 80, "the kill came after every photo was committed"
    records = store.records
    paths = [r.path for r in records]
    assert len(paths) == len(set(paths))  # nothing doubled
    expected = {str(p) for p in gallery.glob("*/*.pgm")}
    skipped = {path for path, _ in outcome["report"].skipped}
    assert set(paths) | skipped == expected  # nothing lost
    assert len(store) == len(records)  # every record searchable


def test_a_build_whose_driver_is_killed_resumes_where_it_stopped(trained, ray_cluster,
                                                                 tmp_path):
    """SIGKILL to the driver (a process of its own, joined to the tests' cluster) mid-build,
    then the same build again: what was committed stays and is not embedded again; the rest
    is added."""
    gallery = _orl(tmp_path / "gallery", PEOPLE[:4])
    folder = tmp_path / "store"
    _fresh_store(trained, folder)
    # The driver's commits are paced (0.3 s after each of its 20) so that the kill lands
    # mid-build however fast the machine: on a quiet one all 40 photos were once committed
    # between two looks 50 ms apart.
    script = textwrap.dedent("""
        import sys, time
        from facerank.scale import RayEngine
        from facerank.store import FaceStore
        from facerank.store.ingest import Writer

        commit = Writer._commit_new
        def paced(self, *args):
            commit(self, *args)
            time.sleep(0.3)
        Writer._commit_new = paced
        FaceStore.open(sys.argv[1]).sync_folder(sys.argv[2], engine=RayEngine(
            address=sys.argv[3], workers=1, batch_size=2, commit_every=2))
        """)
    address = ray_cluster.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-c", script, str(folder), str(gallery), address],
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    store = FaceStore.open(folder)
    committed = 0
    deadline = time.monotonic() + 120
    try:
        while driver.poll() is None and time.monotonic() < deadline:
            with store.database.reading() as sql:
                committed = Database.count(sql)
            if committed >= 4:
                break
            time.sleep(0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert 4 <= committed < 40, f"{committed} committed when the driver was killed"
    with store.database.reading() as sql:
        committed = Database.count(sql)  # a batch may have landed since the last look
    report = store.sync_folder(gallery, engine=RayEngine(workers=1))
    assert report.unchanged == committed
    assert report.added + len(report.skipped) == 40 - committed
    paths = [r.path for r in store.records]
    assert len(paths) == len(set(paths)) == len(store)


def test_uri_records_stay_searchable_when_the_model_changes(trained, ray_cluster, tmp_path):
    """Records of a URI gallery are re-read through pyarrow by a later write's re-embed, even a
    local one (here: the model switched to int8, then one local photo added)."""
    from facerank.model.precision import set_precision

    gallery = _orl(tmp_path / "gallery", PEOPLE[:2])
    store = _fresh_store(trained, tmp_path / "store")
    store.sync_folder(gallery.as_uri(), engine=RayEngine(workers=1))
    assert len(store) == 20 and all(r.path.startswith("file://") for r in store.records)
    set_precision(store.folder, "int8")
    store = FaceStore.open(store.folder)
    report = store.add(ORL / "s40" / "1.pgm", person="s40")
    assert report.reembedded == 20 and not report.skipped
    assert len(store) == 21
    vectors = _vectors_by_path(store)
    found = store.search_vectors(np.stack(list(vectors.values())), k=1)
    assert [_local(m[0].path) for m in found] == list(vectors)


def test_ray_options_are_checked_before_any_work(trained):
    for arguments, message in ((["--workers", "0"], "workers"),
                               (["--workers", "2"], "--ray"),
                               (["--gpus-per-worker", "1"], "--ray")):
        result = CliRunner().invoke(app, ["index", "build", str(ORL), "--store",
                                          str(trained[0]), *arguments])
        assert result.exit_code == 2, result.output
        assert message in result.output


def test_a_gallery_the_workers_cannot_read_stops_the_build_and_says_why(trained, ray_cluster,
                                                                        tmp_path, monkeypatch):
    """As on a cluster whose machines do not see the driver's disk: the files are listed here,
    then gone before the (real) actors read them."""
    from facerank.errors import GalleryError

    gallery = _orl(tmp_path / "gallery", PEOPLE[:1])
    store = _fresh_store(trained, tmp_path / "store")
    listed = RayEngine.scan

    def scan_then_hide(self, folder):
        found = listed(self, folder)
        shutil.rmtree(gallery)
        return found

    monkeypatch.setattr(RayEngine, "scan", scan_then_hide)
    with pytest.raises(GalleryError, match="could not read any of the first"):
        store.sync_folder(gallery, engine=RayEngine(workers=1))
    assert len(store.records) == 0
