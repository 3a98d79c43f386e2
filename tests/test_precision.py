"""int8 as an opt-in precision: recorded with the model, never mixed with fp32 vectors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from facerank.cli.app import app
from facerank.model.config import read_config
from facerank.errors import StoreMismatchError
from facerank.model.precision import set_precision
from facerank.model.runtime import load_model
from facerank.store import FaceStore

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def test_int8_is_recorded_refuses_an_fp32_index_and_finds_each_image_after_a_rebuild(store_copy):
    store, gallery = store_copy
    photos = sorted(gallery.rglob("*.pgm"))
    fp32_vectors = store.embed(photos)
    fp32_answers = [[m.path for m in matches] for matches in store.closest(photos, k=5)]

    config = set_precision(store.folder, "int8")
    assert config.precision == "int8" and (store.folder / config.int8_file).is_file()
    assert replace(config, precision="fp32").identity == store.model.config.identity
    assert config.identity != store.model.config.identity

    reopened = FaceStore.open(store.folder)
    assert reopened.info()["precision"] == "int8" and reopened.is_stale
    with pytest.raises(StoreMismatchError, match="index build"):
        reopened.closest(photos[0])

    reopened.sync_folder(gallery)
    int8_vectors = reopened.embed(photos)
    cosines = (fp32_vectors * int8_vectors).sum(1)  # both unit length
    assert cosines.min() > 0.98, cosines.min()
    assert np.abs(int8_vectors - fp32_vectors).max() > 0  # really another network
    for photo, matches in zip(photos, reopened.closest(photos, k=1)):
        assert matches[0].path == str(photo.resolve())

    # Back to fp32: the same vectors and answers as before, without quantising again.
    int8_file = config.int8_file
    set_precision(store.folder, "fp32")
    back = FaceStore.open(store.folder)
    assert back.info()["precision"] == "fp32" and back.is_stale
    back.sync_folder(gallery)
    np.testing.assert_array_equal(back.embed(photos), fp32_vectors)
    assert [[m.path for m in matches] for matches in back.closest(photos, k=5)] == fp32_answers
    assert read_config(store.folder).int8_file == int8_file


def test_int8_runs_on_onnxruntime_only_and_a_tampered_file_is_refused(trained, tmp_path):
    folder = tmp_path / "store"
    shutil.copytree(trained[0], folder)
    config = set_precision(folder, "int8")
    with pytest.raises(ValueError, match="precision fp32"):
        load_model(folder, runtime="torch")
    assert load_model(folder).precision == "int8"

    path = folder / config.int8_file
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreMismatchError, match="fingerprint"):
        load_model(folder)
    # A damaged int8 file is made again when int8 is chosen again.
    set_precision(folder, "int8")
    assert load_model(folder).precision == "int8"


def test_saving_new_weights_goes_back_to_fp32_and_drops_the_old_int8_file(trained, tmp_path):
    from facerank.model.torch_model import FaceModel

    folder = tmp_path / "store"
    shutil.copytree(trained[0], folder)
    int8_file = set_precision(folder, "int8").int8_file
    model = FaceModel.load(folder)  # the torch weights, as a new training run would save them
    config = model.save(folder)
    assert config.precision == "fp32" and not config.int8_file
    assert not (folder / int8_file).exists()


def test_the_cli_shows_and_switches_precision(trained, tmp_path):
    folder = tmp_path / "store"
    shutil.copytree(trained[0], folder)
    runner = CliRunner()
    shown = runner.invoke(app, ["precision", "--store", str(folder)])
    assert shown.exit_code == 0 and "precision fp32" in shown.output
    switched = runner.invoke(app, ["precision", "int8", "--store", str(folder), "--json"])
    assert switched.exit_code == 0, switched.output
    answer = json.loads(switched.stdout)
    assert answer["precision"] == "int8" and answer["changed"] is True
    wrong = runner.invoke(app, ["precision", "fp16", "--store", str(folder)])
    assert wrong.exit_code == 2 and "fp32, int8" in wrong.output
