"""Queries take inputs the way sentence-transformers' ``encode`` does: one image gives one answer,
many (a list, tuple, generator, any iterable, an N x H x W x 3 array) give one answer each, read
``batch_size`` at a time; ``add``/``remove`` take one path or many; the face-print helpers
``facerank.distance`` / ``facerank.compare`` agree with ``store.verify``."""

from __future__ import annotations

import doctest
import shutil
import subprocess
import sys
import tracemalloc
import weakref

import numpy as np
import pytest
from PIL import Image

import facerank
import facerank.vectors
from facerank.errors import ImageError, UsageError
from facerank.store import FaceStore

REPO_PHOTOS = ["s1/1.pgm", "s2/3.pgm", "s3/5.pgm", "s4/7.pgm", "s5/9.pgm"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained, gallery) -> FaceStore:
    """One indexed store for the read-only tests of this module (queries never change it)."""
    folder = tmp_path_factory.mktemp("inputs") / "store"
    shutil.copytree(trained[0], folder)
    opened = FaceStore.open(folder)
    opened.sync_folder(gallery)
    yield opened
    shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def photos(gallery) -> list:
    return [gallery / name for name in REPO_PHOTOS]


# -- face-print helpers ---------------------------------------------------------------------------

def test_the_vector_helpers_docstring_examples_run():
    failed, attempted = doctest.testmod(facerank.vectors, extraglobs={"facerank": facerank})
    assert attempted >= 6 and failed == 0


def test_distance_and_compare_like_face_recognition():
    known = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0], [0.0, 0.0, 4.0]], np.float32)
    candidate = np.zeros(3, np.float32)
    assert facerank.distance(known, candidate).tolist() == [0.0, 3.0, 4.0]
    assert facerank.distance(known[1], candidate) == 3.0 and isinstance(
        facerank.distance(known[1], candidate), float)
    assert facerank.distance([], candidate).shape == (0,)
    # Same person at or under the threshold, as verify says.
    assert facerank.compare(known, candidate, threshold=3.0).tolist() == [True, True, False]
    assert facerank.compare(known[2], candidate, threshold=3.0) is False
    assert facerank.compare([], candidate, threshold=1.0).tolist() == []


@pytest.mark.parametrize("known,candidate,message", [
    (np.zeros((2, 3)), np.zeros(4), r"known vectors have 3 values and the candidate 4: shapes "
                                    r"\(2, 3\) and \(4,\)"),
    (np.zeros((2, 3)), np.zeros((1, 3)), r"candidate must be one vector .* shape \(1, 3\)"),
    (np.zeros((2, 2, 3)), np.zeros(3), r"known must be one vector .* shape \(2, 2, 3\)"),
    (np.zeros(3), np.zeros(0), r"candidate must be one vector .* shape \(0,\)"),
])
def test_vector_shapes_are_checked_and_named(known, candidate, message):
    with pytest.raises(ValueError, match=message):
        facerank.distance(known, candidate)


@pytest.mark.parametrize("threshold,error", [(None, ValueError), (-1.0, ValueError),
                                             (float("nan"), ValueError), ("0.5", TypeError)])
def test_compare_needs_a_real_threshold(threshold, error):
    with pytest.raises(error, match="threshold"):
        facerank.compare(np.zeros((1, 3)), np.zeros(3), threshold=threshold)


def test_the_helpers_are_in_a_star_import_and_import_nothing_but_numpy():
    code = ("import sys\nimport facerank.vectors\n"
            "print(sorted(m for m in ('torch', 'faiss', 'PIL', 'onnxruntime', 'facerank.store')"
            " if m in sys.modules))\n"
            "from facerank import *\nprint(callable(distance), callable(compare))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True True"], out.stderr


def test_distance_and_compare_agree_with_verify(store, photos):
    vectors = store.embed(photos)
    pairs = [(a, b) for a in range(len(photos)) for b in range(a + 1, len(photos))]
    distances = [facerank.distance(vectors[a], vectors[b]) for a, b in pairs]
    threshold = float(np.median(distances))  # some pairs the same person, some not
    store.set_calibration({"threshold": threshold})
    try:
        assert store.threshold == threshold
        answers = [store.verify(photos[a], photos[b]) for a, b in pairs]
        for (a, b), distance, answer in zip(pairs, distances, answers):
            assert answer.distance == pytest.approx(distance, rel=1e-5, abs=1e-6)
            assert answer.same == facerank.compare(vectors[a], vectors[b], threshold=threshold)
        assert {answer.same for answer in answers} == {True, False}
        # One against many: the row of each pair, as face_recognition's compare_faces.
        row = facerank.compare(vectors[1:], vectors[0], threshold=threshold)
        assert row.tolist() == [store.verify(photos[0], p).same for p in photos[1:]]
    finally:
        store.set_calibration({"threshold": None})


# -- one image or many ----------------------------------------------------------------------------

def test_one_image_gives_one_answer_and_many_give_one_each(store, photos):
    reference = store.embed(list(photos))
    assert reference.shape == (5, 2048) and reference.dtype == np.float32
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in photos])  # 5 x H x W x 3
    for many in (tuple(photos), (p for p in photos), iter(photos), map(str, photos), pixels,
                 list(pixels)):
        assert np.allclose(store.embed(many), reference, atol=1e-5)
    one = store.embed(photos[0])
    assert one.shape == (2048,) and np.allclose(one, reference[0], atol=1e-5)
    assert np.allclose(store.embed(str(photos[0])), one, atol=1e-5)
    assert np.allclose(store.embed(pixels[0]), one, atol=1e-5)
    assert np.allclose(store.embed(Image.open(photos[0])), one, atol=1e-5)
    assert store.embed([photos[0]]).shape == (1, 2048)
    for empty in ([], (), iter([]), np.zeros((0, 8, 8, 3), np.uint8)):
        assert store.embed(empty).shape == (0, 2048)


def test_batch_size_does_not_change_the_answers(store, photos):
    many = photos * 3
    assert np.allclose(store.embed(many, batch_size=1), store.embed(many, batch_size=64),
                       atol=1e-5)
    assert [[m.id for m in ms] for ms in store.closest(iter(many), k=3, batch_size=2)] == \
        [[m.id for m in ms] for ms in store.closest(many, k=3)]


@pytest.mark.parametrize("method,options", [("closest", {"k": 2}), ("classify", {"top_k": 2}),
                                            ("identify", {"k": 2, "top_k": 2})])
def test_every_query_takes_one_or_many(store, photos, method, options):
    query = getattr(store, method)
    each = [query(p, **options) for p in photos]
    assert isinstance(each[0], list) and not isinstance(each[0][0], list)
    assert query((p for p in photos), batch_size=2, **options) == each
    assert query(tuple(photos), **options) == each
    assert query([], **options) == [] and query(iter([]), **options) == []
    # The module-level function, over the default store, takes them the same way.
    assert getattr(facerank, method)(iter(photos), store=store.folder, batch_size=3,
                                     **options) == each


def test_many_images_stream_through_bounded_memory(store):
    """5,000 images from a generator, 64 at a time: the answer is (5000, 2048) and what is held
    at once follows the batch, not the input's length.

    The images are 32 x 32 float32 arrays (12 KB each, as a numpy pipeline hands them over;
    every one is embedded through the store's face step and network). The bound on the peak of
    Python-allocated memory (tracemalloc, which counts numpy's arrays): the vectors themselves
    are 5000 x 2048 x 4 B = 41 MB, held twice for a moment as the batches' arrays are joined into
    one (82 MB). Everything else held at the peak is one batch (64 images, their crops, the
    network's input, ~1-5 MB measured) and the model's working arrays: under 8 MB. Reading the
    whole input before embedding it would hold the 5,000 images as well (5000 x 12 KB = 61 MB,
    before any decoding), so the assertion fails for any implementation that does. The
    generator also counts how many of its images are alive at once: never more than a batch.
    Takes ~30 s on 2 quiet cores: the network's 5,000 forward passes.
    """
    count, side, batch_size = 5000, 32, 64
    rng = np.random.default_rng(7)
    alive, most_alive = [0], [0]

    def released():
        alive[0] -= 1

    def images():
        for _ in range(count):
            image = rng.random((side, side, 3), dtype=np.float32)
            alive[0] += 1
            most_alive[0] = max(most_alive[0], alive[0])
            weakref.finalize(image, released)
            yield image

    store.embed(np.zeros((2, side, side, 3), np.float32))  # warm up outside the measurement
    tracemalloc.start()
    try:
        vectors = store.embed(images(), batch_size=batch_size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert vectors.shape == (count, 2048) and np.isfinite(vectors).all()
    assert most_alive[0] <= batch_size + 1, most_alive[0]
    whole_input = count * side * side * 3 * 4
    assert peak - 2 * vectors.nbytes < 8_000_000 < whole_input, (peak, vectors.nbytes)


def test_show_progress_draws_a_bar_on_stderr(store, photos, capsys):
    store.embed(iter(photos), batch_size=2, show_progress=True)  # no length: "5/?"
    captured = capsys.readouterr()
    assert captured.out == "" and "embedding" in captured.err and "5/?" in captured.err
    store.closest(photos, batch_size=2, show_progress=True)       # a list: "5/5"
    assert "searching" in (err := capsys.readouterr().err) and "5/5" in err
    store.embed(photos)
    assert capsys.readouterr().err == ""  # quiet by default


# -- bad inputs name the item ---------------------------------------------------------------------

def test_a_bad_item_is_named_by_its_position_and_path(store, photos, tmp_path):
    missing = tmp_path / "gone.jpg"
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")

    def stream(bad):
        yield from photos[:3]
        yield bad
        yield photos[4]

    for bad, reason in ((missing, "no such file"), (text, "not an image")):
        with pytest.raises(ImageError) as caught:
            store.embed(stream(bad), batch_size=2)
        assert str(caught.value).startswith(f"images[3] ({bad}): {reason}")
        assert caught.value.position == 3
    with pytest.raises(ImageError, match=r"^images\[1\] \(<array \(4, 4, 2\) uint8>\)"):
        store.classify([photos[0], np.zeros((4, 4, 2), np.uint8)])
    with pytest.raises(TypeError, match=r"^images\[2\]: expected a path"):
        store.closest(iter([photos[0], photos[1], 3.5]))
    with pytest.raises(ImageError, match=f"^{missing}: no such file"):  # one image: no position
        store.identify(missing)


@pytest.mark.parametrize("images,error,message", [
    (42, TypeError, "got int"), ({"a.jpg"}, TypeError, "no order"),
])
def test_neither_an_image_nor_many_is_refused(store, images, error, message):
    with pytest.raises(error, match=message):
        store.embed(images)


@pytest.mark.parametrize("option", [{"batch_size": 0}, {"batch_size": 2.5}, {"k": 0}])
def test_counts_must_be_whole_numbers_of_at_least_one(store, photos, option):
    with pytest.raises(UsageError, match=next(iter(option))):
        store.closest(photos, **option)


# -- add and remove: one or many ------------------------------------------------------------------

def test_add_takes_one_path_or_many_and_refuses_other_types(store_copy, tmp_path):
    store, gallery = store_copy
    one = tmp_path / "ada-1.pgm"
    shutil.copy(gallery / "s1" / "1.pgm", one)
    one.write_bytes(one.read_bytes() + b"\0")  # new content: not found again as a moved file
    before = len(store)
    report = store.add(str(one), person="ada")  # a str is one file, never its characters
    assert report.added == 1 and report.skipped == [] and len(store) == before + 1
    two = tmp_path / "ada-2.pgm"
    two.write_bytes(one.read_bytes() + b"\0")
    assert store.add(two, person="ada").added == 1
    assert {r.person for r in store.records if r.path in (str(one), str(two))} == {"ada"}
    for wrong, message in ((42, "got int"), (b"bytes.jpg", "got bytes"),
                           (Image.new("RGB", (4, 4)), "got Image"),
                           ([one, 7], r"paths\[1\]: expected a path")):
        with pytest.raises(TypeError, match=message):
            store.add(wrong, person="ada")
    with pytest.raises(TypeError, match="person must be a name"):
        store.add(one, person=None)
    assert len(store) == before + 2


def test_remove_takes_ids_and_paths_positionally(store_copy):
    store, gallery = store_copy
    records = sorted(store.records, key=lambda r: r.id)
    before = len(store)
    assert store.remove(records[0].id).removed == 1                      # an id
    assert store.remove(records[1].path).removed == 1                     # a path (str)
    assert store.remove([records[2].id, gallery / "s5" / "10.pgm"]).removed == 2  # a list, mixed
    assert store.remove(np.int64(records[3].id), ids=[records[4].id],
                        paths=records[5].path).removed == 3               # the keywords still work
    assert len(store) == before - 7
    gone = {records[i].id for i in range(6)}
    assert not gone & {r.id for r in store.records}
    for wrong in (1.5, None, b"x.jpg", True):
        with pytest.raises(TypeError, match="record ids"):
            store.remove(wrong)
    assert len(store) == before - 7
