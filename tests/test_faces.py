"""The face step: finding, aligning and answering for every face, on real ORL faces.

The session store (conftest's ``trained``) is trained with the default face step, which is
dlib's HOG detector + 5-point alignment wherever the ``faces`` extra is installed ([dev] has it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facerank.cli.app import app
from facerank.cli.common import NO_FACE_EXIT
from facerank.model.config import CONFIG_FILE, read_config
from facerank.errors import NoFaceError, StoreMismatchError
from facerank.faces.cache import CACHE_FILE
from facerank.faces.detection import (DETECTORS, Face, FaceFinder, FaceStep, align, face_step,
                            landmark_model_path, register_detector)
from facerank.data.images import load_image
from facerank.store import FaceStore

from conftest import EXAMPLE_GALLERY

runner = CliRunner()
HOG = FaceStep(detector="dlib-hog")


def group_photo(path: Path, people: list[str], image: str = "1.pgm", *,
                size=(390, 200), scale: float = 1.0) -> list[tuple[int, int, int, int]]:
    """Real ORL faces of ``people`` pasted side by side on a grey photo; returns where.

    Under 400 px, so that the detector upsamples it as it does ORL's own photos."""
    canvas = Image.new("RGB", size, (128, 128, 128))
    boxes = []
    step = size[0] // len(people)
    for number, person in enumerate(people):
        face = load_image(EXAMPLE_GALLERY / person / image)
        face = face.resize((round(face.width * scale), round(face.height * scale)))
        left = number * step + (step - face.width) // 2
        top = (size[1] - face.height) // 2 + (15 if number % 2 else -15)
        canvas.paste(face, (left, top))
        boxes.append((left, top, left + face.width, top + face.height))
    canvas.save(path)
    return boxes


def no_face_photo(path: Path) -> Path:
    """A smooth gradient: no detector finds a face in it."""
    ramp = np.linspace(0, 255, 200, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (150, 1))] * 3, axis=-1)).save(path)
    return path


def test_the_default_step_is_in_model_json_and_part_of_the_identity(trained):
    folder, result = trained
    saved = json.loads((folder / CONFIG_FILE).read_text())["faces"]
    assert saved["detector"] == "dlib-hog" and saved["no_face"] == "whole"
    assert result.faces == saved
    config = read_config(folder)
    whole = type(config)(**{**config.__dict__, "faces": FaceStep()})
    assert config.identity != whole.identity


def test_every_face_of_a_group_photo_is_found_and_named(store_copy, tmp_path):
    store, _ = store_copy
    people = ["s2", "s4", "s5"]
    boxes = group_photo(tmp_path / "group.png", people)
    answers = store.identify(tmp_path / "group.png", k=3)
    assert len(answers) == len(people)
    found = sorted(answers, key=lambda answer: answer.box[0])  # left to right, as pasted
    for answer, person, pasted in zip(found, people, boxes):
        left, top, right, bottom = answer.box
        centre = ((left + right) / 2, (top + bottom) / 2)
        assert pasted[0] < centre[0] < pasted[2] and pasted[1] < centre[1] < pasted[3]
        # The pasted photo is one of the person's gallery photos (not pixel for pixel the same
        # chip: the gallery's has black beyond ORL's frame where the group photo is grey).
        assert answer.matches[0].person == person, (person, answer.matches[0])
        assert len(answer.face.landmarks) == 5
    # Largest first: areas never grow along the list.
    areas = [answer.face.area for answer in answers]
    assert areas == sorted(areas, reverse=True)
    # The single-answer calls answer for the largest face, unchanged in shape.
    assert store.closest(tmp_path / "group.png", k=1)[0].id == answers[0].matches[0].id


def test_a_rotated_face_is_aligned_eyes_level(tmp_path):
    finder = FaceFinder(HOG, size=160)
    upright = load_image(EXAMPLE_GALLERY / "s3" / "1.pgm").resize((184, 224))
    canvas = Image.new("RGB", (360, 360), (90, 90, 90))
    canvas.paste(upright, (88, 68))
    tilted = canvas.rotate(14, resample=Image.BICUBIC, fillcolor=(90, 90, 90))
    [face] = finder.find(tilted)
    assert abs(face.eye_angle()) > 8  # the photo really is tilted
    chip = finder.align(tilted, face)
    assert chip.size == (160, 160)
    # Detect again on the aligned chip: its eyes are level and where the framing puts them.
    [again] = FaceFinder(HOG, size=160).find(chip)
    assert abs(again.eye_angle()) < 3
    eye_y = np.mean([y for _, y in again.landmarks[:4]])
    assert abs(eye_y - HOG.eye_height * 160) < 0.06 * 160


def test_a_small_photo_is_searched_upsampled_for_every_face_or_where_none_was_found(monkeypatch):
    from facerank.faces import detection

    passes = []
    search = detection.DlibHogDetector._boxes
    monkeypatch.setattr(detection.DlibHogDetector, "_boxes", lambda self, pixels, upsample: (
        passes.append(upsample), search(self, pixels, upsample))[1])
    finder = FaceFinder(HOG, size=64)
    orl = load_image(EXAMPLE_GALLERY / "s3" / "1.pgm")
    # Only the largest face wanted (a gallery photo): ORL's own 92 x 112 crop and an LFW-like
    # 250 px frame are found as they are, one search each.
    frame = Image.new("RGB", (250, 250), (90, 90, 90))
    frame.paste(orl.resize((184, 224)), (33, 13))
    assert len(finder.find(orl, every=False)) == 1 and passes == [0]
    assert len(finder.find(frame, every=False)) == 1 and passes == [0, 0]
    # A face under the detector's 80 px window (ORL's at half size): found only upsampled.
    passes.clear()
    small = Image.new("RGB", (200, 200), (90, 90, 90))
    small.paste(orl.resize((46, 56)), (60, 50))
    [face] = finder.find(small, every=False)
    assert passes == [0, 1] and 60 <= face.box[0] and face.box[2] <= 60 + 46 + 8
    # A small group photo: one large face and two small ones. Every face wanted: both searches,
    # all three found, the large one framed as the first search framed it.
    group = Image.new("RGB", (360, 260), (90, 90, 90))
    group.paste(orl.resize((138, 168)), (20, 50))
    for left in (200, 280):
        group.paste(load_image(EXAMPLE_GALLERY / "s1" / "1.pgm").resize((46, 56)), (left, 100))
    passes.clear()
    largest_only = finder.find(group, every=False)
    every = finder.find(group)
    assert passes == [0, 0, 1] and len(every) == 3
    assert every[0] == largest_only[0] and all(face.box[0] >= 190 for face in every[1:])
    # A photo of 400 px or more with no face is searched once; nothing is made up.
    passes.clear()
    assert finder.find(Image.new("RGB", (400, 300), (90, 90, 90))) == [] and passes == [0]


def test_no_face_photos_follow_the_policy_in_build_and_query(store_copy, tmp_path):
    store, gallery = store_copy
    blank = no_face_photo(gallery / "s1" / "blank.png")
    # Policy "whole" (the store's): indexed as the whole image and named in the report.
    report = store.sync_folder(gallery)
    assert report.added == 1 and report.no_face == [str(blank)]
    answer = store.identify(blank)
    assert len(answer) == 1 and answer[0].face is None and answer[0].matches

    # Policy "skip": the same store with the other policy skips it and refuses to query it.
    config = read_config(store.folder)
    skipping = {**config.to_json(), "faces": {**config.faces.to_json(), "no_face": "skip"}}
    (store.folder / CONFIG_FILE).write_text(json.dumps(skipping))
    reopened = FaceStore.open(store.folder)
    report = reopened.sync_folder(gallery)  # another identity: everything is re-embedded
    assert str(blank) in report.no_face
    assert sorted(report.skipped) == sorted((path, "no face found") for path in report.no_face)
    assert report.reembedded == 51 - len(report.no_face) and len(reopened) == report.reembedded
    assert reopened.identify(blank) == []
    with pytest.raises(NoFaceError, match="blank.png: no face found"):
        reopened.closest(blank)


def test_a_store_built_one_way_refuses_to_be_queried_the_other(store_copy):
    store, gallery = store_copy
    config = read_config(store.folder)
    whole_frames = {**config.to_json(), "faces": FaceStep().to_json()}
    (store.folder / CONFIG_FILE).write_text(json.dumps(whole_frames))
    reopened = FaceStore.open(store.folder)
    assert reopened.is_stale
    with pytest.raises(StoreMismatchError, match="another model or preprocessing"):
        reopened.closest(gallery / "s1" / "1.pgm")


def test_detections_are_not_recomputed_for_an_unchanged_file(tmp_path, trained, gallery):
    folder = tmp_path / "store"
    shutil.copytree(trained[0], folder)
    assert (folder / CACHE_FILE).exists()  # training detected every gallery photo once
    store = FaceStore.open(folder)
    store.sync_folder(gallery)
    assert store.faces.cache.misses == 0 and store.faces.cache.hits == 50
    # A renamed copy has the same content: a cache hit. A changed file is detected again.
    (tmp_path / "more" / "s1").mkdir(parents=True)
    shutil.copy(gallery / "s1" / "1.pgm", tmp_path / "more" / "s1" / "renamed.pgm")
    load_image(gallery / "s2" / "1.pgm").rotate(3).save(tmp_path / "more" / "s1" / "new.png")
    store.sync_folder(tmp_path / "more")
    assert store.faces.cache.misses == 1 and store.faces.cache.hits == 51


def test_a_new_backend_plugs_in_without_touching_the_rest(tmp_path):
    class CentreFace:
        """A stand-in detector: one face in the middle, eyes level. Its ``detect`` leaves out
        ``every``, as a backend that always finds every face may."""

        def __init__(self, step):
            pass

        def detect(self, pixels):
            h, w = pixels.shape[:2]
            y = h * 0.4
            marks = ((w * 0.62, y), (w * 0.55, y), (w * 0.38, y), (w * 0.45, y), (w / 2, h * 0.55))
            return [Face(box=(w // 4, h // 4, 3 * w // 4, 3 * h // 4), confidence=1.0,
                         landmarks=marks)]

    register_detector("centre-test", CentreFace)
    try:
        step = FaceStep(detector="centre-test")
        [item] = FaceFinder(step, size=64).inputs(load_image(EXAMPLE_GALLERY / "s1" / "1.pgm"))
        assert item.image.size == (64, 64) and item.face.confidence == 1.0
    finally:
        DETECTORS.pop("centre-test")
    with pytest.raises(ValueError, match="unknown face detector"):
        FaceStep(detector="centre-test")


def test_the_cnn_backend_loads_a_user_supplied_file(tmp_path):
    model = landmark_model_path().parent / "mmod_human_face_detector.dat"
    if not model.exists():
        pytest.skip("face_recognition_models ships no CNN detector file here")
    step = face_step("dlib-cnn", model_file=model)
    assert step.model_fingerprint and step.identity_parts()[1] == step.model_fingerprint
    boxes = group_photo(tmp_path / "one.png", ["s2"], size=(320, 320), scale=1.5)
    [face] = FaceFinder(step, size=64).find(load_image(tmp_path / "one.png"))
    left, top, right, bottom = face.box
    assert boxes[0][0] < (left + right) / 2 < boxes[0][2]
    broken = tmp_path / "broken.dat"
    broken.write_bytes(b"not a detector")
    with pytest.raises(ValueError, match="not a dlib CNN face detector"):
        FaceFinder(face_step("dlib-cnn", model_file=broken), size=64).find(
            load_image(tmp_path / "one.png"))
    with pytest.raises(ValueError, match="needs its weights file"):
        face_step("dlib-cnn")


def test_align_keeps_the_chip_size_and_framing_for_any_photo_size():
    face = Face(box=(100, 100, 300, 300), confidence=1.0,
                landmarks=((260, 180), (220, 180), (140, 180), (180, 180), (200, 240)))
    photo = Image.new("RGB", (2000, 1500), (10, 20, 30))
    chip = align(photo, face, 96, HOG)
    assert chip.size == (96, 96)


def test_cli_faces_query_all_faces_and_no_face_exit_code(tmp_path, trained, gallery):
    store = tmp_path / "store"
    shutil.copytree(trained[0], store)
    assert runner.invoke(app, ["index", "build", str(gallery), "--store", str(store)]).exit_code == 0
    group_photo(tmp_path / "group.png", ["s4", "s3"])
    drawn = tmp_path / "drawn.png"
    result = runner.invoke(app, ["faces", str(tmp_path / "group.png"), "--json", "--draw",
                                 str(drawn)])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["faces"]) == 2
    assert drawn.read_bytes()[:4] == b"\x89PNG"

    result = runner.invoke(app, ["identify", str(tmp_path / "group.png"), "--store", str(store),
                                 "--json", "-k", "1"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert sorted(face["matches"][0]["person"] for face in answer["faces"]) == ["s3", "s4"]

    blank = no_face_photo(tmp_path / "blank.png")
    result = runner.invoke(app, ["faces", str(blank)])
    assert result.exit_code == NO_FACE_EXIT and "0 face(s)" in result.output
    result = runner.invoke(app, ["identify", str(blank), "--store", str(store)])
    assert result.exit_code == NO_FACE_EXIT
    assert "no face found; answered for the whole image" in result.output

