"""Training on real ORL faces: beats chance, is reproducible, resumes, and saves its history."""

from __future__ import annotations


import json
import urllib.error
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from facerank.errors import (FacerankError, MissingExtraError, StoreLockedError,
                             StoreMismatchError, UsageError, WeightsUnavailableError)
from facerank.model.torch_model import FaceModel
from facerank.model.network import build_network, features_and_logits
from facerank.model.config import read_config
from facerank.cli.app import app
from facerank.data.gallery import SPLIT_FILE, TRAIN_FOLDER
from facerank.training.loop import CURVES_FILE, HISTORY_FILE, train
from facerank.training.recipes import MARGIN, PRESETS, preset

from conftest import TINY, copy_gallery

from facerank.training import augmentation, loop as training

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
    # The result says where its files are (the CLI prints these), all in the store's TRAIN_FOLDER.
    assert Path(result.history_path) == folder / TRAIN_FOLDER / HISTORY_FILE
    assert Path(result.curves_path) == folder / TRAIN_FOLDER / CURVES_FILE
    history = json.loads(Path(result.history_path).read_text())
    assert len(history["history"]) == len(result.history)
    assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy"} <= set(history["history"][0])
    assert Path(result.curves_path).read_bytes()[:4] == b"\x89PNG"
    split = json.loads((folder / TRAIN_FOLDER / SPLIT_FILE).read_text())
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


@pytest.mark.parametrize("tail", [0.0, 0.5])
def test_a_frozen_bn_tail_trains_its_last_epochs_on_the_statistics_learnt_before(
        tmp_path, micro_gallery, monkeypatch, tail):
    config = preset("scratch", **MICRO, frozen_bn_tail=tail)  # 0.5 of 3 epochs: the last one
    store = tmp_path / "store"
    _train_until_interrupted(micro_gallery, store, config, monkeypatch, at_evaluation=3)
    after_two = torch.load(store / "train" / "checkpoint.pt", weights_only=True)["model"]
    _quiet_train(micro_gallery, store, config, weights="none", resume=True)  # epoch 3
    final = FaceModel.load(store).network.state_dict()
    means = [key for key in final if key.endswith("running_mean")]
    statistics = means + [key.replace("mean", "var") for key in means]
    # Epochs 1-2 learnt statistics either way (batch norm starts at mean 0, variance 1).
    assert not any(torch.all(after_two[key] == 0) for key in means)
    kept = [torch.equal(final[key], after_two[key]) for key in statistics]
    assert all(kept) if tail else not any(kept)
    key = "layer4.2.conv3.weight"
    assert not torch.equal(final[key], after_two[key])  # epoch 3 trained the weights either way


def test_a_checkpoint_of_another_recipe_is_refused_naming_what_changed(
        tmp_path, micro_gallery, monkeypatch):
    store = tmp_path / "store"
    _train_until_interrupted(micro_gallery, store, preset("scratch", **MICRO, frozen_bn_tail=0.5),
                             monkeypatch, at_evaluation=2)
    with pytest.raises(StoreMismatchError, match=r"\(frozen_bn_tail: 0\.5 -> 0\.0\); train "):
        _quiet_train(micro_gallery, store, preset("scratch", **MICRO), weights="none",
                     resume=True)


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
        assert torch.equal(augmentation._shift(images, dx, dy), expected), (dx, dy)


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
    with pytest.raises(UsageError, match="sgd, freeze, scratch"):
        preset("fast")


@pytest.mark.parametrize("overrides", [dict(loss="cosface"), dict(loss="arcface"),
                                       dict(loss="cosface", margin=None)])
def test_a_margin_loss_without_a_margin_trains_with_the_documented_default(overrides):
    # Whatever the preset; the CLI passes margin=None when --margin is not given.
    for name in PRESETS:
        config = preset(name, **overrides)
        assert config.margin == MARGIN and config.loss == overrides["loss"], name
    assert preset("sgd").margin == 0.0 and preset("finetune", loss="softmax").margin == 0.0
    assert preset("sgd", loss="arcface", margin=0.1).margin == 0.1


def test_the_training_commands_hold_no_default_of_their_own():
    """Defaults and file names live in the library: the CLI's training commands read them (for
    help text) or print the paths the library returns. No number but 0 and 1 (switches), no
    run-folder file name."""
    import ast

    cli = Path(__file__).resolve().parent.parent / "cli"
    numbers = sorted({node.value for node in ast.walk(ast.parse((cli / "training.py").read_text()))
                      if isinstance(node, ast.Constant) and type(node.value) in (int, float)
                      and node.value not in (0, 1)})
    assert not numbers, f"cli/training.py holds numeric defaults: {numbers}"
    for path in cli.glob("*.py"):
        text = path.read_text()
        for name in (HISTORY_FILE, CURVES_FILE, SPLIT_FILE, "checkpoint.pt"):
            assert name not in text, f"{path.name} spells {name!r}: use the library's"
    assert f"/{TRAIN_FOLDER}/" not in (cli / "training.py").read_text()


def _train_command(tmp_path, gallery, *options):
    return CliRunner().invoke(app, ["train", str(gallery), "--store", str(tmp_path / "s"),
                                    "--weights", "none", *options])


def test_a_bad_preset_name_exits_2_in_one_line_naming_the_choices(tmp_path, micro_gallery):
    result = _train_command(tmp_path, micro_gallery, "--preset", "fast")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: unknown preset 'fast'; choose one of sgd, freeze, scratch, finetune"]


@pytest.mark.parametrize("error, code", [
    (UsageError("bad argument"), 2),
    (MissingExtraError('the ray extra is needed: pip install "facerank[ray]"'), 1),
    (StoreLockedError("another process is writing"), 1),
])
def test_library_errors_become_one_line_and_their_exit_code(tmp_path, micro_gallery, monkeypatch,
                                                            error, code):
    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr("facerank.training.loop.train", fails)
    result = _train_command(tmp_path, micro_gallery, "--epochs", "1")
    assert result.exit_code == code, result.output
    assert result.output.strip().splitlines() == [f"error: {error}"]


@pytest.mark.parametrize("bug", [TypeError("unexpected keyword"), KeyError("epoch"),
                                 ValueError("math domain error")])
def test_a_bug_in_the_library_is_not_passed_off_as_a_usage_error(tmp_path, micro_gallery,
                                                                 monkeypatch, bug):
    def fails(*args, **kwargs):
        raise bug

    monkeypatch.setattr("facerank.training.loop.train", fails)
    result = _train_command(tmp_path, micro_gallery, "--epochs", "1")
    assert result.exit_code != 2
    # Not swallowed: the exception itself comes out, traceback and all.
    assert result.exception is bug and not isinstance(bug, FacerankError)



def test_one_epoch_of_a_tiny_gallery_trains_and_leaves_the_store_whole_on_disk(tmp_path):
    # 5 people x 4 photos, batch 8: two steps in all, too few for a one-cycle warm-up (torch
    # divides by zero): such a run trains at a constant rate instead of failing.
    gallery = copy_gallery(tmp_path / "gallery", per_person=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = train(gallery, tmp_path / "store", preset("scratch", **{**TINY, "epochs": 1,
                                                                       "image_size": 32}),
                       weights="none")
    assert len(result.history) == 1
    # The detections are in the cache file itself, not in a write-ahead log that a copy of the
    # folder taken now could miss (worker threads' connections are closed, not left to GC).
    cache = tmp_path / "store" / "faces.sqlite"
    assert cache.is_file() and not cache.with_name("faces.sqlite-wal").exists()
