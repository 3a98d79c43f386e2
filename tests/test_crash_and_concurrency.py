"""Nothing is lost on a crash, and readers see consistent snapshots while a writer works."""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from facerank.errors import StoreError, StoreLockedError
from facerank.store import FaceStore, file_sha256
from facerank.store.layout import DATABASE_FILE

from conftest import EXAMPLE_GALLERY

BUILD = textwrap.dedent("""
    import sys
    from facerank.store import FaceStore
    FaceStore.open(sys.argv[1]).sync_folder(sys.argv[2], commit_every=4)
""")


def _big_gallery(root: Path, variants: int = 2) -> Path:
    """10 people x 10 x `variants` images: the ORL subset, mirrored and slightly rotated."""
    for person_dir in sorted(EXAMPLE_GALLERY.iterdir()):
        if not person_dir.is_dir():
            continue
        target = root / person_dir.name
        target.mkdir(parents=True)
        for image in sorted(person_dir.glob("*.pgm")):
            shutil.copy(image, target / image.name)
            picture = Image.open(image)
            made = [picture.transpose(Image.FLIP_LEFT_RIGHT), picture.rotate(6), picture.rotate(-6)]
            for number, variant in enumerate(made[:variants - 1]):
                variant.save(target / f"v{number}_{image.name}")
    return root


def _version(folder: Path) -> int:
    """The store's database version (bumped by every commit), read as another process would."""
    try:
        with sqlite3.connect(f"file:{folder / DATABASE_FILE}?mode=ro", uri=True) as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.Error:
        return 0


def _check_consistent(folder: Path) -> set[tuple[int, str]]:
    """Open the store (it refuses if records and index ids disagree); return (id, path)s."""
    store = FaceStore.open(folder)
    for record in store.records:
        assert file_sha256(record.path) == record.sha256
    return {(record.id, record.path) for record in store.records}


def test_sigkill_at_random_moments_loses_nothing(tmp_path, trained):
    gallery = _big_gallery(tmp_path / "gallery", variants=4)
    total = 400
    folder = tmp_path / "store"
    shutil.copytree(trained[0], folder)
    rng = random.Random(1234)
    counts, kills, previous = [], 0, set()
    for attempt in range(10):
        before = _version(folder)
        process = subprocess.Popen([sys.executable, "-c", BUILD, str(folder), str(gallery)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait for this run's first commit (imports and model loading come first), then kill
        # at a random moment of the embedding and committing that follows.
        deadline = time.monotonic() + 120
        while (process.poll() is None and _version(folder) == before
               and time.monotonic() < deadline):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        indexed = _check_consistent(folder)
        # What an earlier run committed survives, under the same id: nothing is embedded twice.
        assert indexed >= previous
        previous = indexed
        counts.append(len(indexed))
        if counts[-1] == total:
            break
    assert kills >= 3, f"only {kills} kills landed mid-build; make the gallery larger"
    print(f"\nSIGKILL test: {kills} kills survived, {sum(counts)} records checked after them, "
          f"index sizes {counts}")
    assert counts == sorted(counts)  # never goes backwards
    store = FaceStore.open(folder)
    report = store.sync_folder(gallery)
    assert report.added == total - counts[-1] and report.unchanged == counts[-1]
    assert len(store) == total
    # Every vector is the one its file gives now: each image finds itself.
    sample = store.records[::37]
    for record, matches in zip(sample, store.closest([r.path for r in sample], k=1)):
        assert matches[0].id == record.id and matches[0].distance < 1e-3


def test_readers_see_consistent_snapshots_while_another_process_writes(tmp_path, trained):
    gallery = _big_gallery(tmp_path / "gallery")
    folder = tmp_path / "store"
    shutil.copytree(trained[0], folder)
    FaceStore.open(folder).add(sorted((gallery / "s1").glob("*.pgm")), person="s1")
    probe = str(sorted((gallery / "s1").glob("*.pgm"))[0])
    writer = subprocess.Popen([sys.executable, "-c", BUILD, str(folder), str(gallery)])
    errors, answers = [], []

    def read_repeatedly():
        while writer.poll() is None:
            try:
                store = FaceStore.open(folder)
                match = store.closest(probe, k=1)[0]
                answers.append(len(store))
                assert match.path == probe and match.distance < 1e-3
            except Exception as error:  # collected: assertion errors included
                errors.append(repr(error))

    readers = [threading.Thread(target=read_repeatedly) for _ in range(3)]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join()
    assert writer.wait() == 0
    assert errors == []
    assert len(answers) > 5 and max(answers) <= 200
    assert len(FaceStore.open(folder)) == 200  # 10 people x 10 images x 2 variants


def test_one_store_object_shared_by_query_threads_and_a_writer(store_copy, tmp_path):
    store, gallery = store_copy
    probe = str(gallery / "s2" / "1.pgm")
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(20):
        Image.open(gallery / "s3" / f"{i % 10 + 1}.pgm").rotate(i + 1).save(extra / f"{i}.png")
    errors, stop = [], threading.Event()

    def query():
        while not stop.is_set():
            try:
                assert store.closest(probe, k=1)[0].path == probe
            except Exception as error:
                errors.append(repr(error))

    threads = [threading.Thread(target=query) for _ in range(3)]
    for thread in threads:
        thread.start()
    for path in sorted(extra.iterdir()):
        store.add([path], person="extra")
    store.remove(person="extra")
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == [] and len(store) == 50


def test_second_writer_process_gets_a_clear_message(store_copy):
    store, gallery = store_copy
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys, time
        handle = open({str(store.folder / '.lock')!r}, "a+")
        fcntl.flock(handle, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        store.lock_wait = 0.5
        with pytest.raises(StoreLockedError, match="another process"):
            store.remove(person="s1")
    finally:
        holder.kill()
        holder.wait()
    assert store.remove(person="s1").removed == 10


@pytest.mark.parametrize("version", [0, 99])
def test_other_legacy_store_formats_are_refused_with_advice(store_copy, version):
    store, _ = store_copy
    (store.folder / DATABASE_FILE).unlink()
    (store.folder / "store.json").write_text(json.dumps({"format_version": version}))
    with pytest.raises(StoreError, match=f"format {version}.*reads format 1 and 2"):
        FaceStore.open(store.folder)


def test_a_newer_database_schema_is_refused_with_advice(store_copy):
    store, _ = store_copy
    with sqlite3.connect(store.folder / DATABASE_FILE) as connection:
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema 99.*reads schema 3 and older"):
        FaceStore.open(store.folder)


def test_a_writer_with_an_old_snapshot_does_not_undo_another_writers_work(store_copy, tmp_path):
    store, gallery = store_copy
    other = FaceStore.open(store.folder)  # opened before the change below
    newcomer = tmp_path / "new.png"
    Image.open(gallery / "s1" / "1.pgm").rotate(8).save(newcomer)
    store.add([newcomer], person="visitor")
    other.remove(person="s2")  # must start from the store as it is now, visitor included
    final = FaceStore.open(store.folder)
    people = {record.person for record in final.records}
    assert "visitor" in people and "s2" not in people and len(final) == 41


# -- whole-index work: re-embed, another index kind, compaction, migration -----------------------

def write_format_1(folder: Path, *, next_id: int | None = None) -> set[tuple[int, str]]:
    """Turn a store into the format facerank wrote before its database (store.json naming an
    index file and a records file), as a user upgrading would have it; returns its (id, path)s."""

    from facerank.search.index import FaceIndex
    from facerank.store.database import Database

    store = FaceStore.open(folder)
    snapshot = store.snapshot()
    records = store.records
    with store.database.reading() as sql:
        ids, vectors = Database.vectors(sql, snapshot.generation, [r.id for r in records],
                                        snapshot.dim)
    index = FaceIndex(snapshot.dim)
    index.add(ids, vectors)
    index.save(folder / "index-000007.faiss")
    (folder / "records-000007.jsonl").write_text("".join(
        json.dumps({"id": r.id, "path": r.path, "person": r.person, "sha256": r.sha256,
                    "size": r.size, "mtime_ns": r.mtime_ns}) + "\n" for r in records))
    (folder / "store.json").write_text(json.dumps({
        "format_version": 1, "generation": 7, "next_id": next_id or int(max(ids)) + 1,
        "index_file": "index-000007.faiss", "records_file": "records-000007.jsonl",
        "model_identity": store.model.config.identity, "index_factory": "Flat",
        "calibration": {"threshold": 0.5, "model_identity": store.model.config.identity}}))
    store.database.close()
    for name in (DATABASE_FILE, DATABASE_FILE + "-wal", DATABASE_FILE + "-shm"):
        (folder / name).unlink(missing_ok=True)
    return {(r.id, r.path) for r in records}


def test_a_format_1_store_is_migrated_on_first_open(store_copy):
    store, gallery = store_copy
    probes = [str(p) for p in sorted(gallery.glob("*/3.pgm"))]
    before = store.closest(probes, k=3)
    expected = write_format_1(store.folder, next_id=9000)  # ids up to 8999 were handed out
    migrated = FaceStore.open(store.folder)
    assert {(r.id, r.path) for r in migrated.records} == expected
    assert migrated.closest(probes, k=3) == before
    assert migrated.threshold == 0.5  # the calibration came along
    assert not list(store.folder.glob("records-*.jsonl")) and not (store.folder / "store.json").exists()
    newcomer = migrated.add([gallery / "s1" / "1.pgm"], person="someone else")
    assert newcomer.updated == 1  # a new id, above every id of format 1
    assert min(r.id for r in migrated.records if r.person == "someone else") >= 9000
    assert len(list(store.folder.glob("index-*.faiss"))) == 1  # built by the migration


PREPARE = {
    # Retrained: every record is re-embedded by the new model, beside the old vectors.
    "reembed": """
        from facerank.model.torch_model import FaceModel
        model = FaceModel.load(folder)
        model.network.fc.bias.data += 1.0
        model.save(folder)
    """,
    # Exact search "stops paying off" at 20 faces: the next sync rebuilds as IVF.
    "index kind": "",
    "compaction": "",
    "migration": "write_format_1(folder)",
}
OPERATION = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import facerank.search.index
    from facerank.store import FaceStore
    folder, gallery, operation = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    if operation == "index kind":
        facerank.search.index.EXACT_MAX_FLOATS = 20 * 2048
        facerank.search.index.TRAIN_PER_LIST = 4
    print("started", flush=True)
    store = FaceStore.open(folder)
    if operation == "compaction":
        store.compact()
    elif operation != "migration":
        store.sync_folder(gallery, commit_every=4)
    print("done", flush=True)
""")


def _run_operation(folder: Path, gallery: Path, operation: str, kill_after: float | None):
    process = subprocess.Popen([sys.executable, "-c", OPERATION, str(folder), str(gallery),
                                operation], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "started"
    started = time.monotonic()
    if kill_after is not None:
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
    process.wait()
    return time.monotonic() - started, process.returncode


@pytest.mark.parametrize("operation", list(PREPARE))
def test_sigkill_during_whole_index_work_loses_nothing(tmp_path, trained, operation):
    """Killed at random moments of a re-embed, an index-kind rebuild, a compaction or a
    migration, the store keeps every committed record under its id, and the next run finishes
    the work."""
    gallery = _big_gallery(tmp_path / "gallery")
    prepared = tmp_path / "prepared"
    shutil.copytree(trained[0], prepared)
    FaceStore.open(prepared).sync_folder(gallery)
    folder = prepared
    exec(textwrap.dedent(PREPARE[operation]), {"folder": folder, "write_format_1": write_format_1})
    if operation == "index kind":
        from facerank.store.database import Database
        store = FaceStore.open(prepared)
        with store.database.writing() as sql:
            Database.set_meta(sql, index_chosen_for=20)
            Database.bump_version(sql)
    expected = {(r.id, r.path) for r in _records(prepared)}
    assert len(expected) == 200
    # How long the work takes uninterrupted, on a copy: the kills land within that time.
    timing = tmp_path / "timing"
    shutil.copytree(prepared, timing)
    duration, code = _run_operation(timing, gallery, operation, None)
    assert code == 0
    rng = random.Random(hash(operation) % 1000)
    for attempt in range(2):
        victim = tmp_path / f"victim{attempt}"
        shutil.copytree(prepared, victim)
        _, code = _run_operation(victim, gallery, operation, rng.uniform(0.0, duration))
        assert {(r.id, r.path) for r in _records(victim)} == expected, f"attempt {attempt}"
        # The next run finishes the work; then every image finds itself.
        assert _run_operation(victim, gallery, operation, None)[1] == 0
        store = FaceStore.open(victim)
        assert not store.is_stale and len(store) == 200
        assert {(r.id, r.path) for r in store.records} == expected
        sample = store.records[::23]
        for record, matches in zip(sample, store.closest([r.path for r in sample], k=1)):
            assert matches[0].id == record.id and matches[0].distance < 1e-3
        if operation == "index kind":
            assert store.info()["index_factory"].startswith("IVF")
        shutil.rmtree(victim)


def _records(folder: Path):
    """The records as a new process sees them, without migrating or refusing anything."""
    from facerank.store.database import Database

    if (folder / "store.json").exists():  # still format 1: the migration did not commit
        lines = sorted(folder.glob("records-*.jsonl"))[-1].read_text().splitlines()
        return [type("R", (), json.loads(line)) for line in lines if line.strip()]
    with Database(folder / DATABASE_FILE).reading() as sql:
        return Database.records(sql)


def test_queries_keep_answering_from_the_old_model_during_a_reembed(store_copy):
    from facerank.model.torch_model import FaceModel

    store, gallery = store_copy
    probe = str(gallery / "s2" / "1.pgm")
    retrained = FaceModel.load(store.folder)
    retrained.network.fc.bias.data += 1.0
    retrained.save(store.folder)
    errors, answers, stop = [], [], threading.Event()

    def query():
        while not stop.is_set():
            try:
                match = store.closest(probe, k=1)[0]
                assert match.path == probe and match.distance < 1e-3
                answers.append(match.id)
            except Exception as error:
                errors.append(repr(error))

    threads = [threading.Thread(target=query) for _ in range(2)]
    for thread in threads:
        thread.start()
    report = store.sync_folder(gallery, commit_every=4)
    stop.set()
    for thread in threads:
        thread.join()
    assert report.reembedded == 50 and not store.is_stale
    assert errors == [] and len(answers) > 3
    assert len(set(answers)) == 1  # the same record, before and after: ids are stable


TRAIN = textwrap.dedent("""
    import sys
    from facerank.training.loop import train
    from facerank.training.recipes import preset
    train(sys.argv[1], sys.argv[2], preset("scratch", image_size=32, epochs=2, batch_size=8),
          weights="none", faces="none")
    print("trained", flush=True)
""")


def test_train_saves_while_another_process_enrols(store_copy, tmp_path):
    store, gallery = store_copy
    trainer = subprocess.Popen([sys.executable, "-c", TRAIN, str(gallery), str(store.folder)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    extra = tmp_path / "extra"
    extra.mkdir()
    enrolled = 0
    while trainer.poll() is None:
        photo = extra / f"{enrolled}.png"
        Image.open(gallery / "s3" / "1.pgm").rotate(enrolled + 1).save(photo)
        enrolling = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            from facerank.store import FaceStore
            FaceStore.open({str(store.folder)!r}).add([{str(photo)!r}], person="visitor")
        """)], capture_output=True, text=True)
        assert enrolling.returncode == 0, enrolling.stderr[-2000:]
        enrolled += 1
    out, err = trainer.communicate()
    assert trainer.returncode == 0 and "trained" in out, err[-2000:]
    assert enrolled >= 2
    after = FaceStore.open(store.folder)
    assert after.model.config.image_size == 32  # the new model was saved whole
    after.sync_folder(gallery)  # re-embeds with it, unless an enrolment after the save did
    assert not after.is_stale
    assert sum(r.person == "visitor" for r in after.records) == enrolled  # none lost
    sample = after.records[::7]
    for record, matches in zip(sample, after.closest([r.path for r in sample], k=1)):
        assert matches[0].id == record.id and matches[0].distance < 1e-3


def test_precision_is_set_while_another_process_indexes(store_copy, tmp_path):
    pytest.importorskip("onnxruntime")
    store, gallery = store_copy
    extra = tmp_path / "more"
    for i in range(40):
        (extra / "p").mkdir(parents=True, exist_ok=True)
        Image.open(gallery / "s4" / f"{i % 10 + 1}.pgm").rotate(i + 1).save(extra / "p" / f"{i}.png")
    indexer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from facerank.store import FaceStore
        for _ in range(3):
            FaceStore.open({str(store.folder)!r}, lock_wait=None).sync_folder({str(extra)!r},
                                                                             commit_every=2)
    """)], stderr=subprocess.PIPE, text=True)
    from facerank.model.precision import set_precision

    config = set_precision(store.folder, "int8", samples=20)
    _, err = indexer.communicate()
    assert indexer.returncode == 0, err[-2000:]
    assert config.precision == "int8" and (store.folder / config.int8_file).is_file()
    reopened = FaceStore.open(store.folder)
    assert reopened.model.precision == "int8" and reopened.is_stale
    assert reopened.sync_folder(gallery).reembedded == 90
