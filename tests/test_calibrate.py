"""Threshold calibration, verify, and "unknown" answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facerank.quality.calibrate import calibrate
from facerank.cli.app import app
from facerank.model.torch_model import FaceModel
from facerank.store import FaceStore

from conftest import EXAMPLE_GALLERY


def test_calibration_separates_people_and_is_stored(store_copy):
    store, gallery = store_copy
    assert store.threshold is None
    result = calibrate(store, far=0.05)
    assert result.source == "held-out split"
    assert result.measured_far <= 0.05 + 1e-9
    assert result.tar > 0.05  # accepts same-person pairs far more often than strangers
    reopened = FaceStore.open(store.folder)
    assert reopened.threshold == pytest.approx(result.threshold)
    own = reopened.closest(gallery / "s1" / "1.pgm", k=1)[0]
    assert reopened.is_unknown(own) is False


def test_strangers_are_rejected_more_often_at_a_stricter_threshold(store_copy):
    store, _ = store_copy
    strangers = [str(p) for n in range(6, 11)
                 for p in sorted((EXAMPLE_GALLERY / f"s{n}").glob("*.pgm"))]
    nearest = [matches[0] for matches in store.closest(strangers, k=1)]
    rejected = {}
    for far in (0.01, 0.2):
        calibrate(store, far=far)
        rejected[far] = np.mean([store.is_unknown(match) for match in nearest])
    # The tiny test model (64 px, 5 people, from scratch) rejects few strangers; the point
    # here is that the threshold does what it says, not how good this model is.
    assert rejected[0.01] > 0 and rejected[0.01] >= rejected[0.2]


def test_unknown_is_decided_on_the_nearest_gallery_image_by_a_threshold_of_its_own(store_copy):
    """1:N: a stranger's nearest of 50 gallery images lies closer than a typical pair of two
    people, so "unknown" gets a threshold calibrated on held-out photos searched in the gallery
    with their own person left out, stricter than the pair threshold."""
    store, gallery = store_copy
    result = calibrate(store, far=0.05)
    # The 15 held-out photos (3 of each of 5 people) are indexed too, as copies under another
    # folder: each is left out of its own search, so none is named by itself.
    assert (result.stranger_queries, result.gallery_images) == (15, 50)
    assert result.strangers_accepted <= 0.05
    assert 0 < result.identified <= 1
    assert result.unknown_threshold < result.threshold
    reopened = FaceStore.open(store.folder)
    assert reopened.unknown_threshold == pytest.approx(result.unknown_threshold)
    assert reopened.threshold == pytest.approx(result.threshold)  # verify's, unchanged
    # Strangers (5 people never enrolled nor trained on): more are rejected by the 1:N
    # threshold than the pair threshold would reject.
    strangers = [str(p) for n in range(6, 11)
                 for p in sorted((EXAMPLE_GALLERY / f"s{n}").glob("*.pgm"))]
    answers = reopened.identify(strangers, k=1, every=False)
    nearest = [faces[0].matches[0].distance for faces in answers]
    assert [faces[0].unknown for faces in answers] == [d > result.unknown_threshold
                                                       for d in nearest]
    assert np.mean([d > result.unknown_threshold for d in nearest]) > np.mean(
        [d > result.threshold for d in nearest])
    answer = next(reopened.identify_each([strangers[0]]))
    assert answer.threshold == pytest.approx(result.unknown_threshold)


def test_a_held_out_photo_indexed_as_another_person_is_not_its_own_stranger(store_copy):
    """A copy of a held-out photo filed under another person (a mislabel) would be its nearest
    "stranger" at distance ~0 and pull the unknown threshold to nothing; copies are recognised
    by their bytes, whatever their path, name or float32 search distance."""
    store, gallery = store_copy
    split = json.loads((store.folder / "train" / "split.json").read_text())
    held_out, person = split["test"][0]
    mislabelled = gallery / "s5" / "copy_of_held_out.pgm"
    assert person != "s5"
    mislabelled.write_bytes(Path(held_out).read_bytes())
    store.add([mislabelled], person="s5")
    result = calibrate(store, far=0.05, save=False)
    # 15 stand-ins at 5%: the threshold sits just under the closest real stranger.
    assert result.unknown_threshold > 0.05
    assert "15 stand-ins cannot measure a rate of 0.05" in result.unknown_caveat


def test_an_unknown_threshold_that_names_few_gallery_people_says_what_it_costs():
    from facerank.quality.calibrate import unknown_caveat

    weak = unknown_caveat(84, 0.01, identified=0.048)
    assert "most true matches would be answered unknown" in weak
    assert "--frozen-bn-tail 0.15" in weak  # the remedy measured on ORL from scratch
    assert "most true matches" not in unknown_caveat(84, 0.01, identified=0.976)
    assert "cannot measure" not in unknown_caveat(200, 0.01)  # 200 stand-ins can measure 1%


def test_calibration_is_dropped_when_the_model_changes(store_copy):
    store, _ = store_copy
    calibrate(store)
    retrained = FaceModel.load(store.folder)
    retrained.network.fc.bias.data += 1.0
    retrained.save(store.folder)
    assert FaceStore.open(store.folder).threshold is None


def test_verify_and_calibrate_commands(store_copy):
    store, gallery = store_copy
    runner = CliRunner()
    same = [str(gallery / "s1" / "1.pgm"), str(gallery / "s1" / "1.pgm")]
    result = runner.invoke(app, ["verify", *same, "--store", str(store.folder), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["same"] is None
    result = runner.invoke(app, ["calibrate", "--store", str(store.folder), "--json"])
    assert result.exit_code == 0, result.output
    calibrated = json.loads(result.stdout)
    assert calibrated["threshold"] > 0 and calibrated["unknown_threshold"] > 0
    result = runner.invoke(app, ["calibrate", "--store", str(store.folder)])
    assert result.exit_code == 0 and "unknown beyond" in result.stdout
    result = runner.invoke(app, ["verify", *same, "--store", str(store.folder)])
    assert result.exit_code == 0 and "same person" in result.stdout
    noise = gallery / "noise.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(1).random((112, 92)) * 255).astype(np.uint8)).save(noise)
    result = runner.invoke(app, ["verify", same[0], str(noise), "--store", str(store.folder)])
    assert result.exit_code == 4 and "different people" in result.stdout


def test_calibration_reports_the_images_it_could_not_read(store_copy, tmp_path):
    store, _ = store_copy
    split_file = store.folder / "train" / "split.json"
    split = json.loads(split_file.read_text())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    split["test"] += [[str(tmp_path / "gone.jpg"), "s1"], [str(broken), "s2"]]
    split_file.write_text(json.dumps(split))
    result = calibrate(store, far=0.05, save=False)
    assert [path for path, _ in result.skipped] == [str(tmp_path / "gone.jpg"), str(broken)]
    assert all(reason for _, reason in result.skipped)
    assert result.same_pairs + result.different_pairs == 15 * 14 // 2  # the 15 readable ones
