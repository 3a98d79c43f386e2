"""The documentation runs: the README's Python blocks, and the example in the docstring of every
public name, are executed against a small real store (the session's trained ORL store, indexed)
in a folder holding the files they name (photo.jpg, group.jpg, faces/, GALLERY/, ...).

A README block that cannot run here (it needs a Ray cluster on S3, say) is preceded by the line
``<!-- not run: WHY -->``; a docstring example never is.

The examples run in order (the README's blocks, then each name as listed) on one copy of the
store, as a reader would type them one after another: an example that writes (add, remove,
reindex, ...) leaves the store answering as the later ones expect, or writes a new folder.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import facerank
from facerank.model.base import BaseConfig, save_base
from facerank.store import FaceStore

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- not run: [^>]*-->\s*)?```python\n(.*?)```", re.S)


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory, trained, gallery):
    """A folder laid out as the examples assume, made the current directory while they run."""
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(trained[0], root / "faces")
    shutil.copytree(gallery, root / "GALLERY")
    store = FaceStore.open(root / "faces")
    store.sync_folder(root / "GALLERY")
    photos = sorted((root / "GALLERY").rglob("*.pgm"))
    for name, source in (("photo.jpg", photos[0]), ("portrait.jpg", photos[11]),
                         ("a.jpg", photos[20]), ("b.jpg", photos[21]), ("c.jpg", photos[30])):
        Image.open(source).convert("RGB").save(root / name)
    # Two people side by side: a photo with several faces.
    left, right = Image.open(photos[2]).convert("RGB"), Image.open(photos[42]).convert("RGB")
    group = Image.new("RGB", (left.width + right.width + 40, max(left.height, right.height)))
    group.paste(left, (0, 0))
    group.paste(right, (left.width + 40, 0))
    group.save(root / "group.jpg")
    (root / "new").mkdir()
    for number, source in enumerate(photos[43:45], start=1):
        Image.open(source).convert("RGB").save(root / "new" / f"ada{number}.jpg")
    # A base (what `facerank pretrain` writes) made from the store's own backbone: a real one
    # for read_base's example, in a second rather than a pretraining run's tens of seconds.
    model = facerank.FaceModel.load(root / "faces")
    save_base(model.network.state_dict(),
              BaseConfig(image_size=model.config.image_size, faces=model.config.faces,
                         people=len(model.config.people)), root / "base")
    return root


@pytest.fixture
def in_docs_folder(docs_folder, monkeypatch):
    monkeypatch.chdir(docs_folder)
    monkeypatch.setenv("FACERANK_STORE", str(docs_folder / "faces"))
    return docs_folder


def readme_blocks() -> list[tuple[int, str, str | None]]:
    """(line, code, why it is not run or None) for each ```python block of the README."""
    text = (REPO / "README.md").read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        why = match.group(1)
        line = text[:match.start(2)].count("\n") + 1
        blocks.append((line, match.group(2), why and why.strip()[len("<!-- not run:"):-3].strip()))
    return blocks


def test_the_readme_python_blocks_run(in_docs_folder):
    namespace: dict = {}
    ran = 0
    for line, code, why in readme_blocks():
        if why:
            continue
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as error:  # noqa: BLE001  (name the block that failed)
            pytest.fail(f"the README's Python block at line {line} fails: "
                        f"{type(error).__name__}: {error}")
        ran += 1
    assert ran >= 3


# Classes whose use is calling them; the rest of the exported classes are answers (frozen
# dataclasses such as Match) and errors, shown by the examples that return or raise them.
CLASSES = ("FaceStore", "FaceIndex", "FaceModel")
# Public functions outside the top-level exports that the README or the CLI's help points to.
MORE = [("facerank.data.photos", "expand_photos"), ("facerank.quality.calibrate",
        "calibrate_vectors"), ("facerank.quality.evaluate", "embed_and_classify"),
        ("facerank.serve", "create_app"), ("facerank.faces.detection", "detection_finder")]


def public_objects() -> list[tuple[str, object]]:
    """Every function ``facerank`` exports, its working classes, and the store's methods."""
    names = [(name, getattr(facerank, name)) for name in sorted(facerank._EXPORTS)]
    names = [(name, value) for name, value in names
             if inspect.isfunction(value) or name in CLASSES]
    methods = [(f"FaceStore.{name}", member) for name, member in vars(FaceStore).items()
               if not name.startswith("_") and callable(getattr(member, "__func__", member))
               and not isinstance(member, property)]
    more = []
    for module, name in MORE:
        try:
            more.append((f"{module}.{name}", getattr(importlib.import_module(module), name)))
        except ImportError:  # an optional extra (serve) not installed: nothing to show
            continue
    return names + methods + more


@pytest.mark.filterwarnings("ignore:training from random initialisation")  # train's example
@pytest.mark.parametrize("name, value", public_objects(), ids=[n for n, _ in public_objects()])
def test_every_public_name_has_an_example_that_runs(name, value, in_docs_folder):
    function = getattr(value, "__func__", value)
    docstring = inspect.getdoc(function) or ""
    assert ">>>" in docstring, f"{name}: its docstring has no example"
    store = facerank.open(in_docs_folder / "faces")
    # The names of the function's own module (as doctest gives them), and the docs' usual three.
    module = inspect.getmodule(function)
    globs = {**vars(module), "facerank": facerank, "store": store,
             "np": __import__("numpy"), "Path": Path}
    test = doctest.DocTestParser().get_doctest(docstring, globs, name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    output: list[str] = []
    runner.run(test, out=output.append)
    assert runner.failures == 0, "".join(output)
