"""Batches that behave: folders and globs as queries, every good photo answered beside the bad
ones, one JSON line per photo, CSV rows, and exit codes 5 and 6 (CLI in-process, real ORL faces)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facerank.cli.app import app
from facerank.data.photos import expand_photos
from facerank.errors import ImageError
from facerank.store import FaceStore

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, trained, gallery) -> Path:
    """One indexed copy of the session's store for this module's read-only queries."""
    folder = tmp_path_factory.mktemp("batches") / "store"
    shutil.copytree(trained[0], folder)
    FaceStore.open(folder).sync_folder(gallery)
    return folder


@pytest.fixture
def photos(tmp_path, gallery) -> dict[str, Path]:
    """A good photo (a copy of an indexed one), a missing one, a text file, a truncated JPEG and
    a photo without a face."""
    good = tmp_path / "good.pgm"
    shutil.copy(gallery / "s2" / "4.pgm", good)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    encoded = io.BytesIO()
    Image.open(gallery / "s3" / "2.pgm").convert("RGB").save(encoded, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(encoded.getvalue()[: len(encoded.getvalue()) // 2])
    ramp = np.linspace(0, 255, 200, dtype=np.uint8)  # a smooth gradient: no face in it
    blank = tmp_path / "blank.png"
    Image.fromarray(np.stack([np.tile(ramp, (150, 1))] * 3, axis=-1)).save(blank)
    return {"good": good, "missing": tmp_path / "missing.jpg", "notes": notes,
            "truncated": truncated, "blank": blank}


def test_a_batch_answers_every_good_photo_and_names_each_bad_one(indexed, photos):
    result = invoke("identify", photos["good"], photos["missing"], photos["notes"],
                    photos["truncated"], "--store", indexed, "-k", "3", "--json")
    assert result.exit_code == 6, result.output
    good, missing, notes, truncated = lines(result)
    assert good["photo"] == str(photos["good"]) and good["error"] is None
    nearest = good["faces"][0]["matches"][0]
    assert nearest["person"] == "s2" and nearest["distance"] < 1e-3
    assert nearest["path"].endswith("s2/4.pgm") and len(good["faces"][0]["matches"]) == 3
    assert set(good) == {"photo", "faces", "threshold", "no_face", "error"}
    assert missing["faces"] == [] and missing["error"] == f"{photos['missing']}: no such file"
    assert notes["error"].startswith(f"{photos['notes']}: not an image")
    assert truncated["error"].startswith(f"{photos['truncated']}: damaged or truncated")

    # The tables: the good photo's answer on stdout, each bad photo named on stderr.
    result = invoke("identify", photos["good"], photos["missing"], "--store", indexed)
    assert result.exit_code == 6
    assert "closest gallery images to" in result.stdout  # (rich folds the long path)
    assert f"{photos['missing']}: no such file" in result.stderr
    assert "1 of 2 photo(s) could not be read" in result.stderr


def test_exit_code_5_for_a_photo_without_a_face_unless_some_failed(indexed, photos):
    result = invoke("identify", photos["good"], photos["blank"], "--store", indexed, "--json")
    assert result.exit_code == 5, result.output
    good, blank = lines(result)
    assert good["error"] is None and blank["error"] is None
    assert blank["faces"][0]["face"] is None  # the 'whole' policy: the whole image answered
    assert blank["no_face"] and not good["no_face"]
    result = invoke("identify", photos["blank"], photos["missing"], "--store", indexed, "--json")
    assert result.exit_code == 6


def test_a_folder_query_answers_every_image_in_it_recursively(tmp_path, indexed, gallery):
    folder = tmp_path / "query"
    shutil.copytree(gallery / "s1", folder / "s1")
    shutil.copytree(gallery / "s4", folder / "deeper" / "s4")
    (folder / "readme.txt").write_text("ignored: not an image")
    (folder / ".hidden.pgm").write_bytes(b"ignored: hidden")
    result = invoke("identify", folder, "--store", indexed, "--largest", "-k", "1", "--json")
    answers = lines(result)
    expected = sorted(str(p) for p in folder.rglob("*.pgm") if not p.name.startswith("."))
    assert [a["photo"] for a in answers] == expected and len(expected) == 20
    # Each photo is a copy of an indexed one: it finds that one at rank 0, whatever the face step.
    for answer in answers:
        assert len(answer["faces"]) == 1
        nearest = answer["faces"][0]["matches"][0]
        assert Path(nearest["path"]).name == Path(answer["photo"]).name
        assert nearest["person"] == Path(answer["photo"]).parent.name
    faceless = any(a["faces"][0]["face"] is None for a in answers)
    assert result.exit_code == (5 if faceless else 0), result.output


def test_a_glob_query_and_a_pattern_that_matches_nothing(tmp_path, indexed, gallery):
    pattern = str(gallery / "s3" / "1*.pgm")
    result = invoke("identify", pattern, "--store", indexed, "--json", "--largest")
    assert result.exit_code in (0, 5), result.output
    assert [a["photo"] for a in lines(result)] == [str(gallery / "s3" / "1.pgm"),
                                                   str(gallery / "s3" / "10.pgm")]
    nothing = str(tmp_path / "*.jpg")
    result = invoke("identify", nothing, "--store", indexed)
    assert result.exit_code == 1 and f"{nothing}: no image matches this pattern" in result.stderr
    assert len(result.output.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("identify", empty, "--store", indexed)
    assert result.exit_code == 1 and f"{empty}: no image in this folder" in result.stderr


def test_csv_has_a_row_per_face_and_one_per_failed_photo(tmp_path, indexed, photos):
    table = tmp_path / "answers.csv"
    result = invoke("identify", photos["good"], photos["missing"], "--store", indexed,
                    "--csv", table)
    assert result.exit_code == 6, result.output
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["photo", "face", "box", "person", "probability", "path",
                             "distance", "unknown", "no_face", "error"]
    good = [row for row in rows if row["photo"] == str(photos["good"])]
    assert [row["face"] for row in good] == [str(n) for n in range(len(good))] and good
    assert good[0]["path"].endswith("s2/4.pgm") and float(good[0]["distance"]) < 1e-3
    assert 0.0 < float(good[0]["probability"]) <= 1.0 and good[0]["error"] == ""
    assert good[0]["no_face"] == "false" and rows[-1]["no_face"] == "false"
    assert rows[-1]["photo"] == str(photos["missing"]) and "no such file" in rows[-1]["error"]

    result = invoke("identify", photos["good"], "--store", indexed, "--csv",
                    tmp_path / "no-such-folder" / "a.csv")
    assert result.exit_code == 1 and "no-such-folder/a.csv" in result.stderr
    assert "--csv" in result.stderr


def test_closest_classify_and_faces_take_batches_the_same_way(tmp_path, indexed, photos, gallery):
    result = invoke("closest", photos["good"], photos["notes"], "--store", indexed, "-k", "2",
                    "--json")
    assert result.exit_code == 6, result.output
    good, notes = lines(result)
    assert [m["rank"] for m in good["matches"]] == [0, 1] and good["matches"][0]["distance"] < 1e-3
    assert notes == {"photo": str(photos["notes"]), "matches": [], "no_face": False,
                     "error": f"{photos['notes']}: not an image, or a format Pillow cannot read"}

    result = invoke("classify", gallery / "s5", photos["missing"], "--store", indexed,
                    "--top-k", "2", "--json")
    assert result.exit_code == 6, result.output
    answers = lines(result)
    assert len(answers) == 11 and all(len(a["people"]) == 2 for a in answers[:10])
    assert answers[-1]["error"] == f"{photos['missing']}: no such file"

    result = invoke("faces", photos["good"], photos["truncated"], photos["blank"], "--json")
    assert result.exit_code == 6, result.output
    good, truncated, blank = lines(result)
    assert good["error"] is None and blank["faces"] == [] and "truncated" in truncated["error"]


def test_the_old_query_name_and_all_faces_still_answer_but_are_not_advertised(indexed, photos):
    result = invoke("query", photos["good"], "--store", indexed, "--all-faces", "--json")
    assert result.exit_code == 0, result.output
    assert lines(result)[0]["faces"][0]["matches"][0]["person"] == "s2"
    assert "`facerank query` is now `facerank identify`" in result.stderr
    # As before, the old name without --all-faces answers the largest face only.
    from test_faces import group_photo

    group = photos["good"].parent / "group.png"
    group_photo(group, ["s1", "s2", "s3"])
    assert len(lines(invoke("identify", group, "--store", indexed, "--json"))[0]["faces"]) == 3
    assert len(lines(invoke("query", group, "--store", indexed, "--json"))[0]["faces"]) == 1
    listed = invoke("--help").stdout
    assert "identify" in listed and "query" not in listed.replace("identify", "")
    assert "--all-faces" not in invoke("identify", "--help").stdout


def test_identify_each_in_the_library(indexed, photos, gallery):
    store = FaceStore.open(indexed)
    inputs = [photos["good"], b"not an image", photos["missing"],
              Image.open(gallery / "s4" / "3.pgm"), str(gallery / "s1" / "2.pgm")]
    answers = list(store.identify_each(inputs, k=1, top_k=2, every=False, batch_size=2))
    assert [a.ok for a in answers] == [True, False, False, True, True]
    assert answers[1].error == "<12 bytes>: not an image, or a format Pillow cannot read"
    assert answers[2].photo == str(photos["missing"]) and answers[2].faces == []
    # The same answers as identify, one photo at a time.
    for answer, photo in zip(answers, inputs):
        if answer.ok:
            alone = store.identify(photo, k=1, top_k=2, every=False)
            assert [f.matches[0].path for f in answer.faces] == [f.matches[0].path for f in alone]
            assert np.allclose([f.people[0].probability for f in answer.faces],
                               [f.people[0].probability for f in alone], atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        next(store.identify_each([photos["good"]], batch_size=0))


def test_expand_photos_keeps_files_as_given_and_expands_folders_and_globs(tmp_path, gallery):
    assert expand_photos(["missing.jpg"]) == [Path("missing.jpg")]
    assert expand_photos([gallery / "s1"]) == sorted((gallery / "s1").glob("*.pgm"))
    assert expand_photos([str(gallery / "s*" / "1.pgm")]) == [gallery / p / "1.pgm"
                                                              for p in sorted(["s1", "s2", "s3",
                                                                               "s4", "s5"])]
    with pytest.raises(ImageError, match="no image matches"):
        expand_photos([str(tmp_path / "*.png")])


def test_under_the_skip_policy_a_faceless_photo_exits_5_in_classify_and_verify(tmp_path, trained,
                                                                               photos):
    # The same model told to skip photos without a face (no index needed for these two).
    folder = tmp_path / "skipping"
    shutil.copytree(trained[0], folder)
    config = json.loads((folder / "model.json").read_text())
    config["faces"]["no_face"] = "skip"
    (folder / "model.json").write_text(json.dumps(config))
    result = invoke("classify", photos["good"], photos["blank"], "--store", folder, "--json")
    assert result.exit_code == 5, result.output
    good, blank = lines(result)
    assert good["people"] and not good["no_face"]
    assert blank == {"photo": str(photos["blank"]), "people": [], "no_face": True, "error": None}
    result = invoke("verify", photos["good"], photos["blank"], "--store", folder)
    assert result.exit_code == 5 and f"{photos['blank']}: no face found" in result.stderr


def test_identify_says_unknown_beyond_the_calibrated_threshold(tmp_path, indexed, gallery):
    folder = tmp_path / "calibrated"
    shutil.copytree(indexed, folder)
    FaceStore.open(folder).set_calibration({"threshold": 1e-3})
    mirrored = tmp_path / "mirrored.png"  # near its original, but not at distance 0
    Image.open(gallery / "s2" / "4.pgm").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    result = invoke("identify", mirrored, gallery / "s2" / "4.pgm", "--store", folder,
                    "--largest", "--json")
    assert result.exit_code in (0, 5), result.output
    far, itself = lines(result)
    assert far["threshold"] == 1e-3 and far["faces"][0]["unknown"] is True
    assert itself["faces"][0]["unknown"] is False  # a copy: distance under 1e-3
    result = invoke("identify", mirrored, "--store", folder, "--largest")
    assert "unknown: the nearest gallery image is" in result.stdout
