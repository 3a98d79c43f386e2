"""Shared fixtures: a real ORL gallery slice and one small trained store per test session.

The slice comes from `examples/gallery` (a credited ORL subset shipped with the repo), so the
suite needs neither the network nor `../shared/data`. Training is tiny (64 px, 24 epochs) to keep
the whole suite within a few minutes on 2 CPU cores; the invariants tested do not depend on size.
"""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest

from facerank.store import FaceStore
from facerank.training.loop import train
from facerank.training.recipes import preset

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_GALLERY = REPO / "examples" / "gallery"
PEOPLE = ["s1", "s2", "s3", "s4", "s5"]

# Small but real: 5 ORL people, 7 training images each, from random initialisation.
# 64 px (the default recipe's size) and 24 epochs: on aligned faces, 48 px and 16 epochs left
# the held-out answers a coin toss from run to run (47-80% with the same seed).
TINY = dict(image_size=64, epochs=24, batch_size=8, lr=2e-3)


def copy_gallery(destination: Path, people=PEOPLE, per_person: int = 10) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for person in people:
        target = destination / person
        target.mkdir(exist_ok=True)
        for image in sorted((EXAMPLE_GALLERY / person).glob("*.pgm"))[:per_person]:
            shutil.copy(image, target / image.name)
    return destination


# For a developer's repeated runs only: FACERANK_TEST_CACHE=DIR keeps the session's gallery and
# trained store there and reuses them (delete DIR after changing training or the model format).
_CACHE = Path(os.environ["FACERANK_TEST_CACHE"]) if os.environ.get("FACERANK_TEST_CACHE") else None


@pytest.fixture(scope="session")
def gallery(tmp_path_factory) -> Path:
    """A read-only-by-convention copy of 5 ORL people (10 images each)."""
    if _CACHE is not None and (_CACHE / "gallery").is_dir():
        return _CACHE / "gallery"
    folder = copy_gallery(tmp_path_factory.mktemp("gallery"))
    if _CACHE is not None:
        shutil.copytree(folder, _CACHE / "gallery")
        return _CACHE / "gallery"
    return folder


@pytest.fixture(scope="session")
def trained(tmp_path_factory, gallery):
    """(store folder, TrainResult): trained once per session, not yet indexed."""
    if _CACHE is not None and (_CACHE / "store" / "result.pickle").is_file():
        return _CACHE / "store", pickle.loads((_CACHE / "store" / "result.pickle").read_bytes())
    folder = _CACHE / "store" if _CACHE is not None else tmp_path_factory.mktemp("store")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = train(gallery, folder, preset("scratch", **TINY), weights="none")
    if _CACHE is not None:
        (folder / "result.pickle").write_bytes(pickle.dumps(result))
    return folder, result


@pytest.fixture
def store_copy(tmp_path, trained, gallery) -> tuple[FaceStore, Path]:
    """A private, indexed copy of the trained store and of its gallery, free to change."""
    folder = tmp_path / "store"
    shutil.copytree(trained[0], folder)
    own_gallery = tmp_path / "gallery"
    shutil.copytree(gallery, own_gallery)
    store = FaceStore.open(folder)
    store.sync_folder(own_gallery)
    return store, own_gallery


@pytest.fixture(autouse=True)
def _free_tmp_path_after_each_test(tmp_path):
    """Each store copy holds a ResNet50 twice (safetensors + ONNX, ~200 MB): removing a test's
    folders as soon as it ends keeps the suite's disk use near 1 GB instead of ~15 GB."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster on 2 CPUs for the session's scale-out tests (started on first use)."""
    ray = pytest.importorskip("ray", reason="needs the ray extra")
    from facerank.scale.cluster import connect

    connect("local", num_cpus=2)
    yield ray
    ray.shutdown()