"""A face prior: pretrain on some ORL people, fine-tune on others, resume, refuse broken bases.

The corpus is 20 ORL people from ``../shared/data`` (beside the repository, as on the
developers' machines and in CI); the fine-tuning gallery is the 5 shipped ORL people of
``examples/gallery``, none of them in the corpus. Two epochs at 32 px: the tests check that the
pieces fit and keep their promises, not what a real pretraining run reaches (that is
``benchmarks/face_prior.py``).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from facerank.cli.app import app
from facerank.model.base import BASE_CONFIG, base_folder, read_base, read_base_config
from facerank.model.config import read_config
from facerank.errors import StoreError, StoreMismatchError, UsageError
from facerank.model.network import load_backbone_weights
from facerank.faces.detection import dlib_available
from facerank.training.pretrain import pretrain
from facerank.training.loop import parameter_groups
from facerank.training.recipes import PRETRAIN, PRETRAIN_MARGINS, preset, pretrain_recipe, recipe

ORL = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl"
CORPUS_PEOPLE = [f"s{i}" for i in range(11, 31)]  # the 5 fine-tuned on are s1-s5
SMALL = dict(epochs=2, image_size=32, batch_size=16)

pytestmark = [
    pytest.mark.skipif(not ORL.is_dir(), reason=f"needs the ORL faces at {ORL}"),
    pytest.mark.skipif(not dlib_available(), reason="needs the faces extra (dlib)"),
]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for person in CORPUS_PEOPLE:
        (folder / person).symlink_to(ORL / person, target_is_directory=True)
    return folder


@pytest.fixture(scope="session")
def base(tmp_path_factory, corpus) -> tuple[Path, str]:
    """(base folder, the CLI's output): `facerank pretrain` as a user runs it."""
    out = tmp_path_factory.mktemp("base")
    result = CliRunner().invoke(app, ["pretrain", str(corpus), "--out", str(out), "--weights",
                                      "none", "--epochs", "2", "--image-size", "32",
                                      "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_pretrain_reports_each_epoch_and_saves_a_base(base):
    folder, output = base
    assert "epoch 1/2" in output and "epoch 2/2" in output
    assert "unseen people's pairs" in output and "next: facerank train" in output
    config = read_base_config(folder)
    assert (config.image_size, config.epochs, config.loss) == (32, 2, "cosface")
    assert config.faces.detector == "dlib-hog" and config.weights_origin == "none"
    state, _ = read_base(folder)
    assert not any(key.startswith("fc.") for key in state)  # no classifier head in a base
    history = json.loads((folder / "history.json").read_text())
    # 2 of the 20 people never train; their photos' pairs are scored every epoch.
    assert history["people"] == 18 and len(history["held_out_people"]) == 2
    assert all(0.0 <= row["pair_auc"] <= 1.0 for row in history["history"])
    assert (folder / "curves.png").stat().st_size > 0
    assert base_folder(folder) == base_folder(folder / BASE_CONFIG) == folder
    assert base_folder(folder / config.weights_file) == folder


def test_train_fine_tunes_a_base_with_its_face_step_and_input_size(base, gallery, tmp_path):
    folder, _ = base
    store = tmp_path / "store"
    runner = CliRunner()
    trained = runner.invoke(app, ["train", str(gallery), "--store", str(store), "--weights",
                                  str(folder), "--epochs", "3", "--json"])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.output)["preset"] == "finetune"
    model = read_config(store)
    base_config = read_base_config(folder)
    assert model.image_size == base_config.image_size == 32
    assert model.faces == base_config.faces
    assert model.weights_origin.startswith(f"base:{folder.name}@")
    assert model.head == "cosine"
    # Batch norm trained with the base's statistics (frozen_bn) and kept them: the same
    # normalisation in training as at query time.
    from safetensors.torch import load_file

    tuned, pretrained = load_file(store / model.weights_file), read_base(folder)[0]
    statistics = [key for key in pretrained if key.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 2 * 53  # every batch-norm layer of a ResNet50
    assert all(torch.equal(tuned[key], pretrained[key]) for key in statistics)
    key = "layer4.2.conv3.weight"
    assert not torch.equal(tuned[key], pretrained[key])  # while the backbone did train

    built = runner.invoke(app, ["index", "build", str(gallery), "--store", str(store), "--json"])
    assert built.exit_code == 0, built.output
    photo = sorted((gallery / "s3").iterdir())[0]
    answer = runner.invoke(app, ["identify", str(photo), "--store", str(store), "--json"])
    assert answer.exit_code == 0, answer.output
    closest = json.loads(answer.stdout)["faces"][0]["matches"][0]
    assert Path(closest["path"]).name == photo.name and closest["person"] == "s3"


def test_batch_bn_fine_tunes_a_base_on_each_batch_s_statistics(base, gallery, tmp_path):
    folder, _ = base
    store = tmp_path / "store"
    trained = CliRunner().invoke(app, ["train", str(gallery), "--store", str(store), "--weights",
                                       str(folder), "--epochs", "1", "--batch-bn", "--json"])
    assert trained.exit_code == 0, trained.output
    recipe_used = json.loads(Path(json.loads(trained.stdout)["history_path"]).read_text())
    assert recipe_used["config"]["frozen_bn"] is False
    from safetensors.torch import load_file

    tuned = load_file(store / read_config(store).weights_file)
    key = "layer1.0.bn1.running_var"
    assert not torch.equal(tuned[key], read_base(folder)[0][key])  # learnt from the batches


def test_a_checkpoint_from_before_a_new_recipe_field_resumes_as_its_default():
    from dataclasses import asdict

    from facerank.training.loop import _same_run

    config = asdict(preset("finetune", frozen_bn=False))
    older = json.dumps({"people": ["a", "b"], "config": {k: v for k, v in config.items()
                                                         if k != "frozen_bn"}})
    assert _same_run(older, json.dumps({"people": ["a", "b"], "config": config}))
    frozen = {**config, "frozen_bn": True}  # the older run learnt batch statistics: not this one
    assert not _same_run(older, json.dumps({"people": ["a", "b"], "config": frozen}))
    # A scratch run saved before frozen_bn_tail trained on batch statistics to the end: the
    # same run as today's scratch, not as one with a tail.
    scratch = asdict(preset("scratch"))
    before_tail = json.dumps({"people": ["a"], "config": {k: v for k, v in scratch.items()
                                                          if k != "frozen_bn_tail"}})
    assert _same_run(before_tail, json.dumps({"people": ["a"], "config": scratch}))
    tailed = asdict(preset("scratch", frozen_bn_tail=0.15))
    assert not _same_run(before_tail, json.dumps({"people": ["a"], "config": tailed}))


def test_a_resumed_pretrain_continues_from_its_checkpoint(base, corpus, tmp_path):
    config = pretrain_recipe(**SMALL)

    def stop_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(KeyboardInterrupt):
            pretrain(corpus, tmp_path, config, weights="none", checkpoint_every=0.0,
                     on_epoch=stop_after_first_epoch)
        assert not (tmp_path / BASE_CONFIG).exists() and (tmp_path / "checkpoint.pt").exists()
        with pytest.raises(StoreError, match="has not finished"):
            load_backbone_weights(str(tmp_path))  # an unfinished base says how to finish it
        with pytest.raises(StoreMismatchError, match="another recipe"):
            pretrain(corpus, tmp_path, pretrain_recipe(**{**SMALL, "lr": 0.1}), weights="none",
                     resume=True)
        epochs_run = []
        resumed = pretrain(corpus, tmp_path, config, weights="none", resume=True,
                           on_epoch=lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [2] and [row["epoch"] for row in resumed.history] == [1, 2]
    # Same seed, same corpus: the resumed run ends with the uninterrupted run's weights.
    assert resumed.base["fingerprint"] == read_base_config(base[0]).fingerprint
    assert not (tmp_path / "checkpoint.pt").exists()  # the base is saved: 280 MB freed


@pytest.mark.parametrize("damage, message", [
    ("weights", "is damaged"),
    ("config", "not a readable facerank base"),
])
def test_a_corrupt_base_is_refused_in_one_line(base, gallery, tmp_path, damage, message):
    broken = tmp_path / "base"
    shutil.copytree(base[0], broken)
    config = read_base_config(broken)
    if damage == "weights":
        weights = broken / config.weights_file
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (broken / BASE_CONFIG).write_text("{not json")
    result = CliRunner().invoke(app, ["train", str(gallery), "--store", str(tmp_path / "s"),
                                      "--weights", str(broken)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


@pytest.mark.parametrize("option", [["--image-size", "48"], ["--faces", "none"]])
def test_another_preprocessing_than_the_base_s_is_refused_unless_asked_for(base, gallery,
                                                                          tmp_path, option):
    result = CliRunner().invoke(app, ["train", str(gallery), "--store", str(tmp_path / "s"),
                                      "--weights", str(base[0]), *option])
    assert result.exit_code == 1
    assert "pretrained on other inputs" in result.output and "--allow-base-mismatch" in \
        result.output


def test_finetune_recipe_is_picked_for_a_base_and_trains_the_backbone_slower(base):
    config = recipe(str(base[0]))
    assert (config.preset, config.image_size, config.backbone_lr) == ("finetune", 32, 0.1)
    assert recipe(str(base[0]), "scratch", epochs=5).preset == "scratch"  # overridable
    assert config.frozen_bn and not recipe(str(base[0]), frozen_bn=False).frozen_bn
    assert not recipe("none").frozen_bn  # from random initialisation the statistics must learn
    assert recipe("none").preset == "scratch"
    # A margin loss asked of a softmax preset gets the margin it needs.
    assert preset("sgd", loss="cosface").margin == 0.2

    from facerank.model.network import build_network

    network = build_network(3, head="cosine")
    groups = parameter_groups(network, config)
    assert [group["lr"] for group in groups] == [config.lr * 0.1, config.lr]
    assert groups[1]["params"] == list(network.fc.parameters())


def test_greyscale_and_colour_augmentation_keep_images_valid():
    import torch

    from facerank.training.augmentation import augment

    torch.manual_seed(0)
    batch = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    grey = augment(batch, preset("scratch", greyscale=1.0, shift=0.0, flip=False))
    assert grey.dtype == torch.uint8 and torch.equal(grey[:, 0], grey[:, 1])
    jittered = augment(batch, preset("scratch", colour=0.5, shift=0.0, flip=False))
    assert jittered.dtype == torch.uint8 and not torch.equal(jittered, batch)


def test_pretrain_recipe_needs_a_margin_loss_and_gives_arcface_an_angle_margin():
    assert (pretrain_recipe().loss, pretrain_recipe().margin) == ("cosface", 0.35)
    assert pretrain_recipe(loss="arcface").margin == PRETRAIN_MARGINS["arcface"] == 0.3
    # None, as the CLI passes for an option not given, keeps the recipe's own value.
    assert pretrain_recipe(loss="arcface", margin=None, epochs=None).margin == 0.3
    assert pretrain_recipe(epochs=None).epochs == PRETRAIN.epochs
    assert pretrain_recipe().balanced and pretrain_recipe().greyscale > 0
    with pytest.raises(UsageError, match="margin loss: cosface or arcface"):
        pretrain_recipe(loss="softmax")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is here: it would run")
def test_pretraining_on_a_gpu_where_there_is_none_is_refused_at_once(corpus, tmp_path):
    result = CliRunner().invoke(app, ["pretrain", str(corpus), "--out", str(tmp_path / "base"),
                                      "--weights", "none", "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "torch sees no CUDA GPU here" in result.output and "--device cpu" in result.output
    assert not (tmp_path / "base").exists()  # refused before anything was read or written
