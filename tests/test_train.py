"""Training on real ORL faces: beats chance, is reproducible, resumes, and saves its history."""

from __future__ import annotations


import json
import urllib.error
import warnings
from dataclasses import replace

import pytest
import torch

from facerank.errors import StoreMismatchError, WeightsUnavailableError
from facerank.model.torch_model import FaceModel
from facerank.model.network import build_network, features_and_logits
from facerank.model.config import read_config
from facerank.training.loop import preset, train

from conftest import TINY, copy_gallery

from facerank.training import loop as training

MICRO = dict(image_size=32, epochs=3, batch_size=8)


def test_training_beats_chance_by_a_wide_margin(trained, tmp_path, gallery):
    folder, result = trained
    # 5 people: chance is 20%. Held-out images were never trained on.
    assert result.test_images == 15 and result.train_images == 35
    assert result.weights_origin == "none"
    # The session model learns aligned faces from 35 photos: its held-out accuracy varies from
    # run to run with the same seed (the threaded kernels' summation order, amplified by so
    # small a set), so its bar is twice chance.
    assert result.test_accuracy >= 0.4, result.history
    # The same recipe on whole images (the behaviour before the face step) is steadier.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        whole = train(gallery, tmp_path / "whole",
                      preset("scratch", **{**TINY, "image_size": 48, "epochs": 16}),
                      weights="none", faces="none")
    assert whole.test_accuracy >= 0.6, whole.history


def test_history_curves_and_split_are_saved(trained):
    folder, result = trained
    history = json.loads((folder / "train" / "history.json").read_text())
    assert len(history["history"]) == len(result.history)
    assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy"} <= set(history["history"][0])
    assert (folder / "train" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    split = json.loads((folder / "train" / "split.json").read_text())
    assert not {p for p, _ in split["train"]} & {p for p, _ in split["test"]}
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.fixture
def micro_gallery(tmp_path):
    return copy_gallery(tmp_path / "g", people=["s1", "s2", "s3"], per_person=5)


def _quiet_train(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return train(*args, **kwargs)


def _train_until_interrupted(gallery, store, config, monkeypatch, *, at_evaluation: int):
    """Train with Ctrl-C arriving at the ``at_evaluation``-th held-out evaluation; a checkpoint
    is written after every epoch (``checkpoint_every=0``)."""
    real_evaluate, calls = training._evaluate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_evaluation:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _quiet_train(gallery, store, config, weights="none", checkpoint_every=0)
    monkeypatch.setattr(training, "_evaluate", real_evaluate)


def test_same_seed_same_model_and_resume_after_interruption(tmp_path, micro_gallery, monkeypatch):
    config = preset("scratch", **MICRO)
    _quiet_train(micro_gallery, tmp_path / "a", config, weights="none")
    _quiet_train(micro_gallery, tmp_path / "b", config, weights="none")
    fingerprint = read_config(tmp_path / "a").fingerprint
    assert read_config(tmp_path / "b").fingerprint == fingerprint

    # Interrupt a third run during epoch 3, then resume it: it must end where the others did.
    _train_until_interrupted(micro_gallery, tmp_path / "c", config, monkeypatch, at_evaluation=3)
    assert not (tmp_path / "c" / "model.json").exists()
    resumed = _quiet_train(micro_gallery, tmp_path / "c", config, weights="none", resume=True)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert read_config(tmp_path / "c").fingerprint == fingerprint

    with pytest.raises(StoreMismatchError, match="another recipe"):
        _quiet_train(micro_gallery, tmp_path / "c", preset("scratch", **{**MICRO, "lr": 0.1}),
                     weights="none", resume=True)


def test_last_epoch_is_kept_unless_best_is_asked_for(tmp_path, micro_gallery):
    # Keeping the best held-out epoch lets the held-out split choose the model, which makes its
    # accuracy there optimistic: the default keeps the last epoch.
    config = preset("scratch", **MICRO, lr=0.05)
    last = _quiet_train(micro_gallery, tmp_path / "last", config, weights="none")
    assert last.kept_epoch == 3 and last.test_accuracy == last.history[-1]["val_accuracy"]
    final_state = torch.load(tmp_path / "last" / "train" / "checkpoint.pt",
                             weights_only=True)["model"]
    saved = FaceModel.load(tmp_path / "last").network.state_dict()
    assert all(torch.equal(saved[name], final_state[name]) for name in final_state)

    best = _quiet_train(micro_gallery, tmp_path / "best", replace(config, keep="best"),
                        weights="none")
    # The same run (keep changes nothing else): its history is the same epochs.
    scores = [row["val_accuracy"] for row in best.history]
    assert scores == [row["val_accuracy"] for row in last.history]
    assert best.test_accuracy == max(scores)
    assert best.kept_epoch == max(e for e, s in enumerate(scores, 1) if s == max(scores))
    same_weights = (read_config(tmp_path / "best").fingerprint
                    == read_config(tmp_path / "last").fingerprint)
    assert same_weights == (best.kept_epoch == 3)


@pytest.mark.parametrize("cached", [False, True])
def test_freeze_preset_trains_only_the_last_stage(tmp_path, micro_gallery, cached):
    config = preset("freeze", **MICRO, cached_features=cached)
    _quiet_train(micro_gallery, tmp_path / "f", config, weights="none")
    # Weights are random in both, but a frozen stem keeps its initial values: rebuild with the
    # same seed and compare.
    torch.manual_seed(config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fresh = FaceModel.create(["s1", "s2", "s3"], weights="none", image_size=32)
    trained_model = FaceModel.load(tmp_path / "f")
    assert torch.equal(fresh.network.conv1.weight, trained_model.network.conv1.weight)
    assert not torch.equal(fresh.network.layer4[0].conv1.weight,
                           trained_model.network.layer4[0].conv1.weight)


def test_cached_features_train_and_score_like_the_saved_model(gallery, tmp_path):
    config = preset("freeze", image_size=48, batch_size=8, cached_features=True, feature_views=2)
    result = _quiet_train(gallery, tmp_path / "cached", config, weights="none")
    # 5 people: chance is 20%. Frozen random features still separate ORL faces well.
    assert result.test_accuracy >= 0.6, result.history
    assert result.cache_seconds > 0
    # Epochs are scored on cached layer3 outputs, the saved model from pixels end to end: the
    # same network in eval mode, so the same accuracy.
    kept = result.history[result.kept_epoch - 1]
    assert kept["val_accuracy"] == pytest.approx(result.test_accuracy)


def test_cached_features_resume_to_the_same_model(tmp_path, micro_gallery, monkeypatch):
    config = preset("freeze", **MICRO, cached_features=True, feature_views=2)
    _quiet_train(micro_gallery, tmp_path / "a", config, weights="none")
    _train_until_interrupted(micro_gallery, tmp_path / "b", config, monkeypatch, at_evaluation=2)
    # The cache is rebuilt from the seed: the resumed run ends where the uninterrupted one did.
    resumed = _quiet_train(micro_gallery, tmp_path / "b", config, weights="none", resume=True)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert read_config(tmp_path / "b").fingerprint == read_config(tmp_path / "a").fingerprint


@pytest.mark.parametrize("name, overrides, message", [
    ("sgd", dict(cached_features=True), "needs trainable='last_stage'"),
    ("scratch", dict(cached_features=True), "needs trainable='last_stage'"),
    ("freeze", dict(cached_features=True, trainable="all"), "needs trainable='last_stage'"),
    ("freeze", dict(cached_features=True, feature_views=0), "feature_views must be >= 1"),
])
def test_cached_features_need_a_frozen_base(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        preset(name, **overrides)


def test_frozen_stages_then_last_stage_is_the_whole_network():
    torch.manual_seed(0)
    network = build_network(3).to(memory_format=torch.channels_last).eval()
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        split = training._last_stage(network, training._frozen_stages(network, x))
        whole = features_and_logits(network, x)[1]
    assert torch.allclose(split, whole, atol=1e-5)


@pytest.mark.parametrize("size", [32, 48, 112])
def test_whole_pixel_shift_matches_affine(size):
    from torchvision.transforms.v2 import functional as F

    generator = torch.Generator().manual_seed(size)
    images = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
    for dx, dy in [(0, 0), (3, -2), (-5, 7), (size - 1, 0), (0, -(size - 1)), (size, 1)]:
        expected = F.affine(images, angle=0.0, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0],
                            interpolation=F.InterpolationMode.BILINEAR)
        assert torch.equal(training._shift(images, dx, dy), expected), (dx, dy)


def test_unreachable_imagenet_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    # Stands in for the download failing (this test must not fetch 100 MB where it can).
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as caught:
        FaceModel.create(["a", "b"], weights="imagenet")
    message = str(caught.value)
    assert "resnet50-" in message and str(tmp_path) in message and "--weights none" in message


def test_local_weights_file_is_used(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(1)
    source = resnet50(weights=None)
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    model = FaceModel.create(["a", "b"], weights=str(tmp_path / "backbone.pth"))
    assert model.config.weights_origin == "file:backbone.pth"
    assert torch.equal(model.network.conv1.weight, source.conv1.weight)
    assert model.network.fc.out_features == 2


def test_bad_weights_choice_names_the_options():
    with pytest.raises(ValueError, match="'imagenet', 'none', a facerank base folder or the path"):
        FaceModel.create(["a", "b"], weights="imagenet21k")


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="sgd, freeze, scratch"):
        preset("fast")
