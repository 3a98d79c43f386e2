"""The command line, in-process through Typer's CliRunner."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from facerank.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_index_query_classify_evaluate_info(tmp_path, trained, gallery):
    store = tmp_path / "store"
    shutil.copytree(trained[0], store)
    result = invoke("index", "build", gallery, "--store", store, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == 50

    photo = gallery / "s2" / "4.pgm"
    result = invoke("identify", photo, "--store", store, "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)["faces"][0]
    assert answer["matches"][0]["path"] == str(photo) and answer["matches"][0]["distance"] < 1e-3
    assert len(answer["people"]) == 5

    result = invoke("identify", photo, "--store", store)
    assert result.exit_code == 0 and "closest gallery images" in result.stdout

    result = invoke("classify", photo, photo, "--store", store, "--top-k", "2", "--json")
    assert result.exit_code == 0, result.output
    assert [len(json.loads(line)["people"]) for line in result.stdout.splitlines()] == [2, 2]

    result = invoke("closest", photo, "--store", store, "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["matches"][0]["path"] == str(photo)

    plot = tmp_path / "confusion.png"
    result = invoke("evaluate", "--store", store, "--plot", plot, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["images"] == 15 and 0.0 <= scores["f1"] <= 1.0
    assert plot.read_bytes()[:4] == b"\x89PNG"

    result = invoke("index", "info", "--store", store, "--json")
    info = json.loads(result.stdout)
    assert info["images"] == 50 and info["images_per_person"]["s1"] == 10

    result = invoke("index", "remove", "--person", "s1", "--store", store, "--json")
    assert json.loads(result.stdout)["removed"] == 10
    result = invoke("index", "add", gallery / "s1" / "1.pgm", "--person", "s1", "--store", store,
                    "--json")
    assert json.loads(result.stdout)["images"] == 41


def test_train_command(tmp_path, gallery):
    store = tmp_path / "trained"
    result = invoke("train", gallery, "--store", store, "--weights", "none", "--epochs", "1",
                    "--image-size", "32", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["preset"] == "scratch"
    assert (store / "model.json").exists()


@pytest.mark.parametrize("args,message", [
    (["identify", "photo.jpg", "--store", "{tmp}/none"], "no store at {tmp}/none: run `facerank "
                                                         "train GALLERY --store {tmp}/none`"),
    (["classify", "photo.jpg", "--store", "{tmp}/none"], "no store at"),
    (["faces", "photo.jpg", "--store", "{tmp}/none"], "no model in {tmp}/none: run `facerank "
                                                      "train"),
    (["index", "info", "--store", "{tmp}/none"], "facerank train"),
    (["train", "{tmp}/no-gallery", "--store", "{tmp}/s", "--weights", "none"], "does not exist"),
    (["train", "{tmp}", "--preset", "fast", "--weights", "none"], "sgd, freeze, scratch"),
    (["train", "{tmp}", "--cached-features", "--weights", "none"], "trainable='last_stage'"),
    (["train", "{tmp}", "--frozen-bn", "--weights", "none"], "random initialisation has none"),
    (["train", "{tmp}", "--frozen-bn-tail", "1", "--weights", "none"], "frozen_bn_tail must be"),
])
def test_errors_are_one_clear_line_and_nonzero(tmp_path, args, message):
    result = invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code in (1, 2)
    assert message.replace("{tmp}", str(tmp_path)) in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unreadable_photo_is_named(tmp_path, trained, gallery):
    store = tmp_path / "store"
    shutil.copytree(trained[0], store)
    invoke("index", "build", gallery, "--store", store)
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    result = invoke("identify", bad, "--store", store)
    assert result.exit_code == 6 and f"{bad}: not an image" in result.stderr


def test_doctor_exit_codes(tmp_path, gallery):
    result = invoke("doctor", gallery, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["findings"] == []
    broken = tmp_path / "g"
    shutil.copytree(gallery, broken)
    (broken / "s1" / "bad.jpg").write_text("no")
    result = invoke("doctor", broken)
    assert result.exit_code == 3 and "[unreadable]" in result.stdout and "bad.jpg" in result.stdout


@pytest.mark.parametrize("command", [["train"], ["index", "build"], ["index", "add"],
                                     ["index", "remove"], ["index", "info"],
                                     ["identify"], ["closest"], ["faces"], ["classify"],
                                     ["evaluate"], ["demo"], ["doctor"],
                                     ["verify"], ["calibrate"], ["serve"], ["pretrain"]])
def test_every_command_has_help_with_an_example(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Example" in result.output


def test_import_is_light_and_module_runs():
    code = "import sys, facerank; print(sorted(m for m in ('torch', 'typer', 'faiss') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
    done = subprocess.run([sys.executable, "-m", "facerank", "--help"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and "index" in done.stdout


def test_a_star_import_keeps_the_builtin_open_and_does_not_import_torch():
    code = ("import builtins, sys\nfrom facerank import *\n"
            "print(open is builtins.open, 'torch' in sys.modules, callable(closest))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "True"], out.stderr


@pytest.mark.parametrize("module", ["quality.calibrate", "quality.evaluate", "model.precision",
                                    "quality.doctor"])
def test_quality_modules_do_not_import_training_or_torch(module):
    # They read the saved split (facerank.data.gallery), not the training code, to know the photos.
    code = (f"import sys, facerank.{module}; "
            "print('torch' in sys.modules, 'facerank.training.loop' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_exported_functions_stay_functions_after_their_modules_are_imported():
    # Importing the modules that define facerank.train / evaluate / calibrate leaves the
    # exported names the functions.
    code = ("import facerank, facerank.training.pretrain, facerank.quality.evaluate, "
            "facerank.quality.calibrate\n"
            "from facerank.training.recipes import recipe\n"
            "print(*(callable(f) and not hasattr(f, '__path__') and type(f).__name__"
            " for f in (facerank.train, facerank.evaluate, facerank.calibrate)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["function"] * 3, out.stderr
