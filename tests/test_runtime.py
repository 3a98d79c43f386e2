"""ONNX Runtime and torch compute the same function; the query path needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from facerank.model.config import read_config
from facerank.data.images import load_image
from facerank.model.runtime import load_model
from facerank.store import FaceStore

pytest.importorskip("onnxruntime")


def test_a_trained_store_carries_an_onnx_export_and_auto_picks_it(trained):
    config = read_config(trained[0])
    assert config.onnx_file and (trained[0] / config.onnx_file).is_file()
    assert load_model(trained[0]).runtime == "onnxruntime"
    assert load_model(trained[0], runtime="torch").runtime == "torch"


def test_both_runtimes_give_the_same_vectors_and_probabilities(trained, gallery):
    images = [load_image(path) for path in sorted(gallery.glob("*/*.pgm"))[:12]]
    onnx_vectors, onnx_probabilities = load_model(trained[0]).embed_and_classify(images)
    torch_vectors, torch_probabilities = load_model(
        trained[0], runtime="torch").embed_and_classify(images, batch_size=5)
    assert onnx_vectors.shape == torch_vectors.shape == (12, 2048)
    np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=1e-4)
    np.testing.assert_allclose(onnx_probabilities, torch_probabilities, atol=1e-4)
    assert (onnx_probabilities.argmax(1) == torch_probabilities.argmax(1)).all()


def test_a_store_built_by_torch_answers_the_same_through_onnx(store_copy, gallery):
    store, _ = store_copy
    photos = sorted(gallery.glob("*/*.pgm"))[::7]
    by_torch = FaceStore.open(store.folder, runtime="torch")
    by_onnx = FaceStore.open(store.folder, runtime="onnxruntime")
    for photo in photos:
        [by_torch_answer] = by_torch.identify(photo, k=5, every=False)
        [by_onnx_answer] = by_onnx.identify(photo, k=5, every=False)
        torch_matches, torch_people = by_torch_answer.matches, by_torch_answer.people
        onnx_matches, onnx_people = by_onnx_answer.matches, by_onnx_answer.people
        assert [m.id for m in torch_matches] == [m.id for m in onnx_matches]
        assert onnx_matches[0].path == str(photo.resolve()) or onnx_matches[0].distance < 1e-3
        assert [p.person for p in torch_people] == [p.person for p in onnx_people]


def test_queries_through_onnx_never_import_torch(store_copy, gallery):
    store, _ = store_copy
    photo = sorted(gallery.glob("s2/*.pgm"))[0]
    script = (
        "import json, sys\n"
        "import facerank\n"
        f"[face] = facerank.open({str(store.folder)!r}).identify({str(photo)!r}, k=1, "
        "every=False)\n"
        "print(json.dumps([face.matches[0].person, face.people[0].person, "
        "'torch' in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    nearest, _, imported_torch = json.loads(done.stdout)
    assert nearest == "s2"
    assert imported_torch is False


def test_an_unknown_runtime_names_the_choices(trained):
    with pytest.raises(ValueError, match="auto, onnxruntime, torch"):
        load_model(trained[0], runtime="tensorrt")
