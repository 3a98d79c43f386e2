"""Nothing is lost on a crash, and readers see consistent snapshots while a writer works."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from facerank.errors import StoreError, StoreLockedError
from facerank.store import STATE_FILE, FaceStore, file_sha256

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


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
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
        before = _mtime(folder / STATE_FILE)
        process = subprocess.Popen([sys.executable, "-c", BUILD, str(folder), str(gallery)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait for this run's first commit (imports and model loading come first), then kill
        # at a random moment of the embedding and committing that follows.
        deadline = time.monotonic() + 120
        while (process.poll() is None and _mtime(folder / STATE_FILE) == before
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
        with pytest.raises(StoreLockedError, match="another process"):
            store.remove(person="s1")
    finally:
        holder.kill()
        holder.wait()
    assert store.remove(person="s1").removed == 10


@pytest.mark.parametrize("version", [0, 2, 99])
def test_other_store_formats_are_refused_with_advice(store_copy, version):
    store, _ = store_copy
    state = json.loads((store.folder / STATE_FILE).read_text())
    state["format_version"] = version
    (store.folder / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(StoreError, match=f"format {version}.*reads format 1"):
        FaceStore.open(store.folder)


def test_changed_preprocessing_makes_the_index_stale(store_copy):
    store, gallery = store_copy
    config = json.loads((store.folder / "model.json").read_text())
    config["image_size"] = 40
    (store.folder / "model.json").write_text(json.dumps(config))
    reopened = FaceStore.open(store.folder)
    assert reopened.is_stale
    assert reopened.sync_folder(gallery).reembedded == 50


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
