"""The store: invariants of closest/classify, save/load, add/remove, incremental builds."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerank.errors import ImageError, StoreError, StoreMismatchError
from facerank.model.torch_model import FaceModel
from facerank.store import FaceStore
from facerank.store.database import Database

from conftest import EXAMPLE_GALLERY


def test_every_gallery_image_is_its_own_nearest_neighbour(store_copy):
    store, gallery = store_copy
    records = store.records
    assert len(records) == 50
    answers = store.closest([r.path for r in records], k=3)
    for record, matches in zip(records, answers):
        assert matches[0].id == record.id and matches[0].path == record.path
        assert matches[0].distance < 1e-3
        assert [m.rank for m in matches] == [0, 1, 2]
        assert matches[0].distance <= matches[1].distance <= matches[2].distance


def test_classify_gives_sorted_probabilities_of_known_people(store_copy):
    store, gallery = store_copy
    predictions = store.classify(str(gallery / "s1" / "1.pgm"), top_k=5)
    assert [p.rank for p in predictions] == [0, 1, 2, 3, 4]
    probabilities = [p.probability for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert abs(sum(probabilities) - 1.0) < 1e-4  # 5 people, top 5: the whole distribution
    assert {p.person for p in predictions} == set(store.people)


def test_every_input_kind_gives_the_same_answer(store_copy):
    store, gallery = store_copy
    path = gallery / "s2" / "3.pgm"
    reference = store.embed(path)
    assert reference.shape == (2048,) and reference.dtype == np.float32
    assert abs(np.linalg.norm(reference) - 1.0) < 1e-4  # L2-normalised by default
    image = Image.open(path)
    for source in (str(path), path.read_bytes(), image, np.asarray(image)):
        assert np.allclose(store.embed(source), reference, atol=1e-5)
    assert store.embed([path, path]).shape == (2, 2048)


def test_save_then_load_gives_identical_answers(store_copy):
    store, gallery = store_copy
    photos = [str(p) for p in sorted((gallery / "s3").glob("*.pgm"))[:4]]
    before = store.identify(photos, k=4, top_k=3)
    reopened = FaceStore.open(store.folder)
    assert reopened.identify(photos, k=4, top_k=3) == before
    assert np.array_equal(reopened.embed(photos), store.embed(photos))


def test_add_and_remove_change_the_answers(store_copy, tmp_path):
    store, gallery = store_copy
    photo = gallery / "s4" / "2.pgm"
    newcomer = tmp_path / "new.png"
    Image.open(photo).transpose(Image.FLIP_LEFT_RIGHT).save(newcomer)

    report = store.add([newcomer], person="visitor")
    assert report.added == 1 and len(store) == 51
    assert store.closest(newcomer, k=1)[0].person == "visitor"
    assert FaceStore.open(store.folder).closest(newcomer, k=1)[0].person == "visitor"

    assert store.remove(paths=[photo]).removed == 1
    assert all(m.path != str(photo) for m in store.closest(photo, k=50))
    assert store.remove(person="s4").removed == 9
    assert "s4" not in {m.person for m in store.closest(photo, k=50)}
    assert len(FaceStore.open(store.folder)) == 41


def test_rebuild_embeds_only_new_or_changed_files_and_drops_deleted(store_copy):
    store, gallery = store_copy
    again = store.sync_folder(gallery)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 50)

    (gallery / "s5" / "1.pgm").unlink()
    changed = gallery / "s5" / "2.pgm"
    Image.open(changed).transpose(Image.FLIP_LEFT_RIGHT).save(changed, format="PPM")
    shutil.copy(gallery / "s1" / "1.pgm", gallery / "s1" / "copy.pgm")
    report = store.sync_folder(gallery)
    assert (report.added, report.updated, report.removed) == (1, 1, 1)
    assert len(store) == 50


def test_broken_file_is_skipped_and_reported_not_fatal(store_copy):
    store, gallery = store_copy
    broken = gallery / "s1" / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    report = store.sync_folder(gallery)
    assert [(path, "not an image" in reason) for path, reason in report.skipped] == \
        [(str(broken), True)]
    assert len(store) == 50
    with pytest.raises(ImageError, match="broken.jpg"):
        store.closest(broken)


@pytest.mark.parametrize("change", ["weights", "preprocessing"])
def test_a_changed_model_is_never_queried_with_old_vectors(store_copy, change):
    store, gallery = store_copy
    if change == "weights":
        retrained = FaceModel.load(store.folder)
        retrained.network.fc.bias.data += 1.0  # any change of weights is a new model
        retrained.save(store.folder)
    else:
        config = json.loads((store.folder / "model.json").read_text())
        config["image_size"] = 40
        (store.folder / "model.json").write_text(json.dumps(config))
    stale = FaceStore.open(store.folder)
    assert stale.is_stale
    with pytest.raises(StoreMismatchError, match="another model"):
        stale.closest(gallery / "s1" / "1.pgm")
    report = stale.sync_folder(gallery)
    assert report.reembedded == 50 and not stale.is_stale
    assert stale.closest(gallery / "s1" / "1.pgm", k=1)[0].distance < 1e-3


@pytest.mark.parametrize("runtime, weights_field", [("torch", "weights_file"),
                                                     ("onnxruntime", "onnx_file")])
def test_tampered_weights_are_refused(store_copy, runtime, weights_field):
    store, _ = store_copy
    weights = store.folder / getattr(store.model.config, weights_field)
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(StoreMismatchError, match="fingerprint"):
        FaceStore.open(store.folder, runtime=runtime)


def test_missing_store_and_empty_index_say_what_to_run(tmp_path, trained):
    with pytest.raises(StoreError, match="facerank train"):
        FaceStore.open(tmp_path / "nothing")
    folder = tmp_path / "fresh"
    shutil.copytree(trained[0], folder)
    with pytest.raises(StoreError, match="index build"):
        FaceStore.open(folder).closest(np.zeros((8, 8), np.uint8))


def test_old_index_files_are_cleaned_up(store_copy):
    store, gallery = store_copy
    for person in ("s1", "s2", "s3"):
        store.remove(person=person)
        store.compact()
    files = sorted(p.name for p in store.folder.glob("index-*.faiss"))
    assert len(files) == 2  # the current index file and the one before it
    assert len(FaceStore.open(store.folder)) == 20


def test_the_index_kind_follows_the_gallery_size(store_copy, monkeypatch):
    store, gallery = store_copy
    assert store.info()["index_factory"] == "Flat"  # 50 faces: exact search
    # Pretend exact search stops paying off at 20 faces: the 50-face gallery outgrows it.
    monkeypatch.setattr("facerank.search.index.EXACT_MAX_FLOATS", 20 * 2048)
    with store.database.writing() as sql:
        Database.set_meta(sql, index_chosen_for=20)
        Database.bump_version(sql)
    report = store.sync_folder(gallery)
    assert report.added == 0 and report.reembedded == 0  # vectors were moved, not re-embedded
    assert store.info()["index_factory"].startswith("IVF")
    reopened = FaceStore.open(store.folder)
    assert reopened.info()["index_factory"] == store.info()["index_factory"]
    for photo in sorted(gallery.glob("*/*.pgm"))[::9]:
        nearest = reopened.closest(photo, k=1)[0]
        assert nearest.person == photo.parent.name and nearest.distance < 1e-3


def _stored(store: FaceStore) -> tuple[dict[int, str], list[tuple[int | None, str]]]:
    """(gallery roots by id, (gallery, path) of each record) as the database holds them."""
    with store.database.reading() as sql:
        roots = dict(sql.execute("SELECT id, root FROM galleries"))
        return roots, sql.execute("SELECT gallery, location FROM records ORDER BY id").fetchall()


def test_a_renamed_gallery_resyncs_to_the_same_records(store_copy, monkeypatch):
    store, gallery = store_copy
    roots, rows = _stored(store)
    # Records keep paths relative to the gallery they were synced from.
    assert roots == {1: f"{gallery}/"} and {g for g, _ in rows} == {1}
    assert {p for _, p in rows} == {p.relative_to(gallery).as_posix()
                                    for p in gallery.glob("*/*.pgm")}
    before = {(r.id, Path(r.path).relative_to(gallery).as_posix()) for r in store.records}
    renamed = gallery.with_name("renamed gallery")
    gallery.rename(renamed)
    (renamed / "s1" / "1.pgm").rename(renamed / "s1" / "first.pgm")  # and one file renamed
    read = []
    import facerank.store.ingest as ingest
    monkeypatch.setattr(ingest, "read_source", lambda path, _read=ingest.read_source: (
        read.append(Path(path).name), _read(path))[1])
    report = store.sync_folder(renamed)
    assert (report.moved, report.added, report.reembedded, report.removed) == (50, 0, 0, 0)
    # One row changed: the gallery's root. The renamed file was read (to find it by its
    # content) and a sample of 8 others (to check that this is the same gallery); the other 41
    # followed their gallery unread.
    assert _stored(store) == ({1: f"{renamed}/"}, [(1, p if p != "s1/1.pgm" else "s1/first.pgm")
                                                  for _, p in rows])
    assert len(read) == 9 and read.count("first.pgm") == 1
    after = {(r.id, Path(r.path).relative_to(renamed).as_posix()) for r in store.records}
    assert len(store) == 50 and {i for i, _ in after} == {i for i, _ in before}
    assert after - before == {(next(i for i, p in before if p == "s1/1.pgm"), "s1/first.pgm")}
    assert store.closest(renamed / "s2" / "4.pgm", k=1)[0].path == str(renamed / "s2" / "4.pgm")
    again = store.sync_folder(renamed)
    assert (again.unchanged, again.moved, again.added) == (50, 0, 0)


def test_a_store_moved_with_its_gallery_answers_from_the_new_place(store_copy, tmp_path):
    store, gallery = store_copy
    ids = {Path(r.path).relative_to(gallery).as_posix(): r.id for r in store.records}
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(store.folder, moved / "store")
    shutil.move(gallery, moved / "gallery")
    again = FaceStore.open(moved / "store")
    report = again.sync_folder(moved / "gallery")
    assert (report.moved, report.added, report.removed, report.reembedded) == (50, 0, 0, 0)
    assert {Path(r.path).relative_to(moved / "gallery").as_posix(): r.id
            for r in again.records} == ids
    photo = moved / "gallery" / "s3" / "2.pgm"
    assert again.closest(photo, k=1)[0].path == str(photo)


def test_a_gallery_split_in_two_keeps_every_record(store_copy, tmp_path):
    store, gallery = store_copy
    ids = {r.path: r.id for r in store.records}
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, people in ((first, ("s1", "s2", "s3")), (second, ("s4", "s5"))):
        folder.mkdir()
        for person in people:
            shutil.move(gallery / person, folder / person)
    gallery.rmdir()
    # The old gallery follows its larger part; the rest keep their records until found again.
    report = store.sync_folder(first)
    assert (report.moved, report.added, report.removed) == (30, 0, 0) and len(store) == 50
    report = store.sync_folder(second)
    assert (report.moved, report.added, report.removed, report.reembedded) == (20, 0, 0, 0)
    moved_ids = {r.path.replace(str(first), str(gallery)).replace(str(second), str(gallery)): r.id
                 for r in store.records}
    assert moved_ids == ids


def test_a_gallery_with_the_same_names_is_not_taken_for_an_unmounted_one(store_copy, tmp_path):
    store, gallery = store_copy
    ids = {r.path: r.id for r in store.records}
    # Another gallery: the same folder and file names, photos of other people (ORL's s6-s10
    # as s1-s5), with the sizes and times of the first one's files. Then the first is unmounted.
    other = tmp_path / "other"
    for photo in gallery.glob("*/*.pgm"):
        twin = other / photo.parent.name / photo.name
        twin.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLE_GALLERY / f"s{int(photo.parent.name[1:]) + 5}" / photo.name, twin)
        shutil.copystat(photo, twin)
    assert {p.stat().st_size for p in other.glob("*/*")} == {p.stat().st_size
                                                             for p in gallery.glob("*/*")}
    unmounted = tmp_path / "unmounted"
    gallery.rename(unmounted)
    report = store.sync_folder(other)
    assert (report.moved, report.added) == (0, 50)
    gallery_back = unmounted.rename(gallery)
    report = store.sync_folder(gallery_back)
    assert (report.unchanged, report.added, report.removed) == (50, 0, 0)
    assert {r.path: r.id for r in store.records if r.path.startswith(str(gallery))} == ids
    photo = other / "s1" / "1.pgm"
    assert store.closest(photo, k=1)[0].path == str(photo)


def test_a_retrained_store_moved_with_its_gallery_reembeds_from_the_new_place(store_copy,
                                                                              tmp_path):
    store, gallery = store_copy
    with store.database.writing() as sql:  # as a retrain leaves it: vectors of another model
        sql.execute("UPDATE generations SET model_identity = 'an older model'")
        Database.bump_version(sql)
    moved = tmp_path / "moved gallery"
    gallery.rename(moved)
    report = FaceStore.open(store.folder, ).sync_folder(moved)
    assert report.reembedded == 50 and (report.added, report.removed) == (0, 0)


def test_a_store_of_schema_2_is_upgraded_on_open_and_its_paths_made_relative(store_copy):
    store, gallery = store_copy
    expected = {r.id: r.path for r in store.records}
    # Make it what facerank wrote before galleries existed: absolute paths, schema 2.
    with store.database.writing() as sql:
        sql.execute("UPDATE records SET location = (SELECT root FROM galleries) || location")
        sql.execute("DROP INDEX records_by_location")
        sql.execute("ALTER TABLE records DROP COLUMN gallery")
        sql.execute("ALTER TABLE records RENAME COLUMN location TO path")
        sql.execute("DROP TABLE galleries")
        sql.execute("CREATE INDEX IF NOT EXISTS records_by_path ON records (path)")
        sql.execute("PRAGMA user_version = 2")
    store.database.close()
    reopened = FaceStore.open(store.folder)
    assert reopened.database.schema_version() == 3
    with reopened.database.reading() as sql:  # a schema-2 facerank still running fails loudly
        with pytest.raises(sqlite3.OperationalError, match="no such column: path"):
            sql.execute("SELECT path FROM records")
    assert {r.id: r.path for r in reopened.records} == expected  # still absolute, still found
    assert _stored(reopened)[0] == {}
    report = reopened.sync_folder(gallery)
    assert (report.unchanged, report.added, report.removed) == (50, 0, 0)
    roots, rows = _stored(reopened)
    assert roots == {1: f"{gallery}/"} and all(g == 1 and not p.startswith("/") for g, p in rows)
    assert {r.id: r.path for r in reopened.records} == expected


def test_one_enrolment_writes_a_few_rows_not_the_index(store_copy, tmp_path):
    store, gallery = store_copy
    store.compact()  # everything in the index file
    index_files = {p: p.stat().st_mtime_ns for p in store.folder.glob("index-*.faiss")}
    assert len(index_files) == 1
    newcomer = tmp_path / "new.png"
    Image.open(gallery / "s4" / "2.pgm").rotate(5).save(newcomer)
    database = sorted(store.folder.glob("store.sqlite*"))
    sizes = sum(p.stat().st_size for p in database)
    assert store.add(newcomer, person="visitor").added == 1  # one path as a string is one file
    # The index file is untouched; the database grew by about one vector (8 KiB) and its pages.
    assert {p: p.stat().st_mtime_ns for p in store.folder.glob("index-*.faiss")} == index_files
    grown = sum(p.stat().st_size for p in store.folder.glob("store.sqlite*")) - sizes
    assert grown < 64 * 1024, grown
    assert store.info()["pending_changes"] == 1
    # A new process sees the enrolment: the index file plus the change log since.
    reopened = FaceStore.open(store.folder)
    assert reopened.closest(newcomer, k=1)[0].person == "visitor" and len(reopened) == 51


def test_removing_images_deletes_the_uploads_the_store_owns(store_copy):
    store, gallery = store_copy
    uploads = store.folder / "uploads" / "visitor"
    uploads.mkdir(parents=True)
    photos = []
    for i in range(3):
        photos.append(uploads / f"{i}.png")
        Image.open(gallery / "s5" / f"{i + 1}.pgm").save(photos[-1])
    store.add(photos, person="visitor")
    assert {Path(r.path) for r in store.records if r.person == "visitor"} == set(photos)
    one = next(r.id for r in store.records if r.path == str(photos[0]))
    store.remove(ids=[one])
    assert not photos[0].exists() and photos[1].exists()
    store.remove(person="visitor")
    assert not any(p.exists() for p in photos)
    store.remove(person="s5")
    assert (gallery / "s5" / "1.pgm").exists()  # the gallery's own files are never deleted


def test_a_path_given_twice_is_one_record(store_copy, tmp_path):
    store, gallery = store_copy
    photo = tmp_path / "twice.png"
    Image.open(gallery / "s1" / "2.pgm").rotate(3).save(photo)
    assert store.add([photo, photo, str(photo)], person="visitor").added == 1
    assert sum(r.path == str(photo) for r in store.records) == 1


def test_a_reembed_keeps_records_whose_file_cannot_be_read_and_retries_them(store_copy):
    store, gallery = store_copy
    hidden = gallery / "s3" / "4.pgm"
    kept = hidden.with_name("4.pgm.away")
    retrained = FaceModel.load(store.folder)
    retrained.network.fc.bias.data += 1.0
    retrained.save(store.folder)
    hidden.rename(kept)  # e.g. a network share down during the re-embed
    report = store.add([], person="nobody")  # any write re-embeds first
    assert report.reembedded == 49 and report.removed == 0
    assert [path for path, _ in report.skipped] == [str(hidden)]
    assert len(store.records) == 50 and len(store) == 49  # kept, not searchable yet
    kept.rename(hidden)
    assert store.add([], person="nobody").reembedded == 1
    assert len(store) == 50 and store.closest(hidden, k=1)[0].path == str(hidden)


def test_a_reembed_that_cannot_read_most_records_keeps_the_old_index(store_copy, tmp_path):
    store, gallery = store_copy
    photo = gallery / "s1" / "1.pgm"
    before = [m.path for m in store.closest(photo, k=5)]
    retrained = FaceModel.load(store.folder)
    retrained.network.fc.bias.data += 1.0
    retrained.save(store.folder)
    gallery.rename(tmp_path / "away")  # the whole gallery out of reach (an unmounted disk)
    with pytest.raises(StoreError, match="only 0 of 50 records could be re-embedded"):
        store.add([], person="nobody")
    assert [m.path for m in store.closest(tmp_path / "away" / "s1" / "1.pgm", k=5)] == before
    (tmp_path / "away").rename(gallery)  # back: the next write finishes the re-embed
    assert store.add([], person="nobody").reembedded == 50
    assert store.closest(photo, k=1)[0].path == str(photo)


def test_removals_are_folded_into_the_index_and_stray_index_files_go(store_copy, monkeypatch):
    store, gallery = store_copy
    store.compact()
    stray = store.folder / "index-g1-w3-abcdef.faiss"  # as a writer killed before its switch
    stray.write_bytes(b"left behind")
    monkeypatch.setattr("facerank.store.snapshot.REMOVED_MAX", 5)
    store.remove(person="s2")  # 10 removals: past the limit, so compacted
    assert store.info()["pending_changes"] == 0 and not stray.exists()
    assert len(list(store.folder.glob("index-*.faiss"))) == 2  # the new one and the previous
    assert "s2" not in {m.person for m in FaceStore.open(store.folder).closest(
        gallery / "s2" / "1.pgm", k=40)}


def test_an_index_that_cannot_remove_is_refused(store_copy):
    store, _ = store_copy
    with pytest.raises(ValueError, match="cannot remove"):
        store.reindex(factory="HNSW32")
    assert store.reindex(factory="IVF4,Flat") == "IVF4,Flat"
    assert store.info()["index_factory"] == "IVF4,Flat" and len(store) == 50


def test_export_parquet_holds_every_searchable_record_and_its_vector(store_copy, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow (the ray extra)")
    store, _ = store_copy
    rows = store.export_parquet(tmp_path / "faces.parquet")
    table = pq.read_table(tmp_path / "faces.parquet")
    assert rows == table.num_rows == len(store)
    meta = json.loads(table.schema.metadata[b"facerank"])
    assert meta["model_identity"] == store.snapshot().model_identity
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    by_path = {r.path: r for r in store.records}
    assert set(table.column("path").to_pylist()) == set(by_path)
    # The exported vectors are the ones the store searches: each finds its own record first.
    found = store.search_vectors(vectors, k=1)
    assert [m[0].id for m in found] == table.column("id").to_pylist()


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", ".hidden", "  "])
def test_a_person_name_that_could_leave_or_hide_in_a_folder_is_refused(store_copy, name):
    # The library's rule, so the CLI and the server refuse alike (the server saves uploads in a
    # folder named after the person).
    from typer.testing import CliRunner

    from facerank.cli.app import app
    from facerank.errors import UsageError

    store, gallery = store_copy
    photo = sorted((gallery / "s1").glob("*.pgm"))[0]
    before = len(store)
    with pytest.raises(UsageError, match="invalid person name"):
        store.add(photo, person=name)
    result = CliRunner().invoke(app, ["index", "add", str(photo), "--person", name, "--store",
                                      str(store.folder)])
    assert result.exit_code == 2 and "invalid person name" in result.stderr, result.output
    assert len(FaceStore.open(store.folder)) == before


def test_a_uri_gallery_without_an_engine_says_how_to_build_it(store_copy):
    from facerank.errors import UsageError

    store, _ = store_copy
    with pytest.raises(UsageError, match="RayEngine"):
        store.sync_folder("s3://bucket/photos/")


def test_index_add_takes_a_folder_of_one_persons_photos(store_copy, tmp_path):
    from typer.testing import CliRunner

    from facerank.cli.app import app

    store, gallery = store_copy
    folder = tmp_path / "ada"
    (folder / "more").mkdir(parents=True)
    for number, photo in enumerate(sorted((gallery / "s1").glob("*.pgm"))[:3]):
        Image.open(photo).convert("RGB").save((folder if number else folder / "more") /
                                              f"ada{number}.png")
    result = CliRunner().invoke(app, ["index", "add", str(folder), "--person", "ada", "--store",
                                      str(store.folder), "--json"])
    assert result.exit_code == 0, result.output
    added = sorted(Path(r.path).name for r in FaceStore.open(store.folder).records
                   if r.person == "ada")
    assert added == ["ada0.png", "ada1.png", "ada2.png"]  # ada0 from the sub-folder
