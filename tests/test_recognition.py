"""The recognition levers (margin heads, balanced sampling, centre crop) and 1:1 verification
scoring, on real faces where it matters."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from facerank.model.config import ModelConfig, resize_for_model
from facerank.errors import GalleryError
from facerank.quality.evaluate import evaluate
from facerank.model.torch_model import FaceModel
from facerank.training.losses import margin_logits
from facerank.training.loop import epoch_order, train
from facerank.training.recipes import preset
from facerank.quality.verification import (best_threshold, distances, plot_distance_histogram, plot_roc,
                                   read_pairs, score_pairs, tar_at_far)

from conftest import copy_gallery


def test_cosface_lowers_only_the_true_persons_logit_by_scale_times_margin():
    config = preset("scratch", loss="cosface", margin=0.35, scale=30.0)
    logits = torch.tensor([[0.5, 0.2, -0.1], [0.1, 0.9, 0.3]]) * 30.0
    labels = torch.tensor([0, 2])
    out = margin_logits(logits, labels, config)
    expected = logits.clone()
    expected[0, 0] -= 30 * 0.35
    expected[1, 2] -= 30 * 0.35
    assert torch.allclose(out, expected)


def test_arcface_adds_the_margin_to_the_angle():
    config = preset("scratch", loss="arcface", margin=0.5, scale=10.0)
    cosines = torch.tensor([[0.8, 0.1], [-0.99, 0.2]])
    out = margin_logits(cosines * 10.0, torch.tensor([0, 0]), config)
    assert out[0, 0] == pytest.approx(10 * math.cos(math.acos(0.8) + 0.5), abs=1e-4)
    # Past pi - margin the angle would wrap around: the target logit must still only fall.
    assert out[1, 0] < -9.9
    assert torch.equal(out[:, 1], cosines[:, 1] * 10.0)


def test_softmax_logits_pass_through():
    logits = torch.randn(4, 3)
    assert torch.equal(margin_logits(logits, torch.tensor([0, 1, 2, 0]), preset("sgd")), logits)


def test_balanced_order_draws_people_evenly_however_many_images_each_has():
    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    drawn = torch.cat([epoch_order(labels, True, torch.Generator().manual_seed(s))
                       for s in range(20)])
    share = torch.bincount(labels[drawn], minlength=3).float() / len(drawn)
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.04), share
    plain = epoch_order(labels, False, torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(100))


def test_centre_crop_keeps_the_middle_and_changes_the_identity_only_when_set():
    image = np.zeros((100, 100, 3), np.uint8)
    image[25:75, 25:75] = 255  # a white square filling the central half
    cropped = resize_for_model(Image.fromarray(image), 20, crop=0.5)
    assert cropped[2:-2, 2:-2].min() == 255 and cropped.mean() > 220  # edges: resampling blur
    assert resize_for_model(Image.fromarray(image), 20).mean() < 80
    base = ModelConfig(people=("a", "b"), fingerprint="f")
    assert ModelConfig(people=("a", "b"), fingerprint="f", crop=1.0).identity == base.identity
    assert ModelConfig(people=("a", "b"), fingerprint="f", crop=0.5).identity != base.identity
    with pytest.raises(ValueError, match="crop"):
        preset("scratch", crop=0.0)


def test_margin_head_learns_real_faces_and_survives_save_and_load(tmp_path, loss="cosface"):
    gallery = copy_gallery(tmp_path / "g", people=["s1", "s2", "s3", "s4"])
    config = preset("scratch", loss=loss, margin=0.2, image_size=40, epochs=12, batch_size=8,
                    crop=0.9, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = train(gallery, tmp_path / "store", config, weights="none")
    assert result.test_accuracy >= 0.5, result.history  # 4 people: chance is 25%
    loaded = FaceModel.load(tmp_path / "store")
    assert loaded.config.head == "cosine" and loaded.config.crop == 0.9
    images = [Image.open(p).convert("RGB") for p in sorted((gallery / "s1").iterdir())[:3]]
    vectors, probabilities = loaded.embed_and_classify(images)
    again = FaceModel.load(tmp_path / "store").embed_and_classify(images)
    assert np.array_equal(vectors, again[0]) and np.array_equal(probabilities, again[1])
    assert np.allclose(probabilities.sum(1), 1.0, atol=1e-5)
    from facerank.model import onnx_model as onnx

    if onnx.available():  # the cosine head and the crop travel into the ONNX graph too
        ort_vectors, ort_probabilities = onnx.OnnxFaceModel.load(tmp_path / "store") \
            .embed_and_classify(images)
        assert np.allclose(ort_vectors, vectors, atol=1e-4)
        assert np.allclose(ort_probabilities, probabilities, atol=1e-4)
    flipped = evaluate(tmp_path / "store", flip=True)
    assert flipped.images == result.test_images and 0.0 <= flipped.accuracy <= 1.0


def _write_pairs(tmp_path, lines):
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_lfw_pairs_file_is_read_with_paths_and_kinds(tmp_path):
    pairs = read_pairs(_write_pairs(tmp_path, ["2", "Ada_L\t1\t3", "Ada_L\t2\tBob_K\t12"]),
                       tmp_path / "images")
    assert pairs.left[0] == tmp_path / "images" / "Ada_L" / "Ada_L_0001.jpg"
    assert pairs.right[1] == tmp_path / "images" / "Bob_K" / "Bob_K_0012.jpg"
    assert pairs.same.tolist() == [True, False] and len(pairs.images) == 4
    with pytest.raises(GalleryError, match=r"pairs.txt:2"):
        read_pairs(_write_pairs(tmp_path, ["1", "Ada_L\tone\t2"]), tmp_path)


def test_threshold_chosen_on_one_set_scores_another():
    same = np.array([True, True, True, False, False, False])
    d = np.array([0.1, 0.2, 0.6, 0.5, 0.8, 0.9])
    threshold, train_accuracy = best_threshold(d, same)
    assert train_accuracy == pytest.approx(5 / 6) and 0.2 < threshold < 0.5
    score = score_pairs(d, same, np.array([0.15, 0.7, 0.3, 0.1]), np.array([True, False, False, True]))
    assert score.accuracy == pytest.approx(3 / 4) and score.pairs == 4
    assert score.auc == pytest.approx(1.0)  # perfectly ranked, yet one pair is past the threshold
    # At 0 false accepts allowed, only same pairs closer than every different pair count.
    assert tar_at_far(d, same, 0.0) == pytest.approx(2 / 3)


def _orl_pairs(tmp_path, gallery):
    """ORL photos laid out as LFW's NAME/NAME_0001.jpg with a pairs file: 3 same-person pairs
    per person and 3 rounds of different-people pairs."""
    people = sorted(p.name for p in gallery.iterdir())
    images = tmp_path / "images"
    lines = ["0"]
    for person in people:
        (images / person).mkdir(parents=True)
        for k, source in enumerate(sorted((gallery / person).iterdir())[:4], start=1):
            Image.open(source).save(images / person / f"{person}_{k:04d}.jpg")
        lines += [f"{person}\t1\t{k}" for k in (2, 3, 4)]
    lines += [f"{a}\t{i}\t{b}\t{i}" for i in (1, 2, 3)
              for a, b in zip(people, people[1:] + people[:1])]
    return _write_pairs(tmp_path, lines), images


def test_verification_on_real_faces_separates_people(tmp_path, trained, gallery):
    """A trained store's face prints: same-person ORL pairs are closer than different ones."""
    folder, _ = trained
    model = FaceModel.load(folder)
    pairs = read_pairs(*_orl_pairs(tmp_path, gallery))
    d = distances(lambda paths: model.embed([Image.open(p).convert("RGB") for p in paths]), pairs)
    score = score_pairs(d, pairs.same, d, pairs.same)
    assert score.auc > 0.75, d
    plot_roc({"facerank": (d, pairs.same)}, tmp_path / "roc.png")
    plot_distance_histogram(d, pairs.same, tmp_path / "hist.png", threshold=score.threshold)
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "hist.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_scores_pairs_with_a_threshold_chosen_on_other_pairs(tmp_path, trained, gallery):
    from typer.testing import CliRunner

    from facerank.cli.app import app

    pairs_file, images = _orl_pairs(tmp_path, gallery)
    result = CliRunner().invoke(app, ["evaluate", "--store", str(trained[0]), "--pairs",
                                      str(pairs_file), "--threshold-pairs", str(pairs_file),
                                      "--images", str(images), "--plot", str(tmp_path / "h.png"),
                                      "--flip", "--json"])
    assert result.exit_code == 0, result.output
    score = json.loads(result.output)
    assert score["pairs"] == 30 and score["auc"] > 0.75
    assert score["accuracy"] == pytest.approx(score["threshold_accuracy"])  # the same pairs
    assert (tmp_path / "h-roc.png").exists() and (tmp_path / "h.png").exists()
    missing = CliRunner().invoke(app, ["evaluate", "--store", str(trained[0]), "--pairs",
                                       str(pairs_file), "--images", str(images)])
    assert missing.exit_code != 0 and "threshold" in missing.output
