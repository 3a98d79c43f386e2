"""Galleries laid out as one folder per person, and the seeded, stratified train/test split.

    gallery/
      ada_lovelace/  1.jpg 2.png ...
      alan_turing/   a.jpg ...

Files that are not images by name are ignored; files that claim to be images but cannot be read
are reported by whoever decodes them (training, indexing), never fatal.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facerank.errors import GalleryError, StoreError, UsageError
from facerank.data.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class GalleryImage:
    path: Path
    person: str


@dataclass(frozen=True)
class Gallery:
    """The images of a gallery folder, sorted by person then path (so runs are reproducible)."""

    root: Path
    images: tuple[GalleryImage, ...]
    #: Problems found while scanning (an empty person folder, an unreadable sub-folder), as
    #: ``(path, reason)`` pairs; the scan goes on without them.
    problems: tuple[tuple[str, str], ...] = ()

    @property
    def people(self) -> list[str]:
        return sorted({image.person for image in self.images})

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Split:
    """A train/test split of a gallery. ``train_only`` names people too small to be tested."""

    train: tuple[GalleryImage, ...]
    test: tuple[GalleryImage, ...]
    train_only: tuple[str, ...] = field(default=())


def scan_gallery(folder: str | Path) -> Gallery:
    """List the images of a one-folder-per-person gallery.

    >>> gallery = facerank.scan_gallery("GALLERY/")      # GALLERY/s1/1.pgm, ... GALLERY/s5/10.pgm
    >>> gallery.people, len(gallery)
    (['s1', 's2', 's3', 's4', 's5'], 50)

    Symbolic links are followed once (loops are detected and reported); hidden files and folders
    are skipped; images directly in ``folder`` (not in a person's folder) are reported.
    """
    root = Path(folder)
    if not root.is_dir():
        raise GalleryError(f"gallery folder {root} does not exist or is not a folder; a gallery "
                           "is a folder with one sub-folder of images per person")
    images: list[GalleryImage] = []
    problems: list[tuple[str, str]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if entry.suffix.lower() in IMAGE_SUFFIXES:
                problems.append((str(entry), "image outside any person's folder; ignored"))
            continue
        if not entry.is_dir():
            continue
        found = _images_under(entry, problems)
        if not found:
            problems.append((str(entry), "person folder has no images"))
        images.extend(GalleryImage(path, entry.name) for path in found)
    if not images:
        raise GalleryError(f"no images found in {root}; a gallery is a folder with one "
                           "sub-folder of images (JPEG, PNG, PGM, GIF, BMP, WebP) per person")
    return Gallery(root=root, images=tuple(images), problems=tuple(problems))


def _images_under(folder: Path, problems: list[tuple[str, str]]) -> list[Path]:
    """Image files below ``folder`` (sub-folders included), in a stable order."""
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()

    def on_error(error: OSError) -> None:
        problems.append((str(error.filename), f"cannot be listed ({error.strerror})"))

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=on_error):
        try:
            info = os.stat(dirpath)
        except OSError:
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen_dirs:  # a symlink loop, or two links to one folder
            problems.append((dirpath, "folder reached twice through symbolic links; skipped"))
            dirnames[:] = []
            continue
        seen_dirs.add(key)
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            found.append(Path(dirpath) / name)
    return found


def split_gallery(gallery: Gallery, *, test_fraction: float = 0.3, seed: int = 0) -> Split:
    """Split each person's images into train and test, stratified and seeded.

    Every person with at least two images has at least one image on each side; people with a
    single image go to training only and are listed in ``Split.train_only``.

    >>> split = facerank.split_gallery(facerank.scan_gallery("GALLERY/"), test_fraction=0.3)
    >>> len(split.train), len(split.test), split.train_only     # 5 people, 10 photos each
    (35, 15, ())
    """
    if not 0.0 <= test_fraction < 1.0:
        raise UsageError(f"test_fraction must be in [0, 1), got {test_fraction}")
    by_person: dict[str, list[GalleryImage]] = defaultdict(list)
    for image in gallery.images:
        by_person[image.person].append(image)
    rng = np.random.default_rng(seed)
    train: list[GalleryImage] = []
    test: list[GalleryImage] = []
    train_only: list[str] = []
    for person in sorted(by_person):
        items = by_person[person]
        order = rng.permutation(len(items))
        if len(items) < 2 or test_fraction == 0.0:
            if len(items) < 2:
                train_only.append(person)
            train.extend(items)
            continue
        n_test = min(len(items) - 1, max(1, round(len(items) * test_fraction)))
        test.extend(items[i] for i in sorted(order[:n_test]))
        train.extend(items[i] for i in sorted(order[n_test:]))
    return Split(train=tuple(train), test=tuple(test), train_only=tuple(train_only))


def demo_gallery() -> Path:
    """The ten ORL people that ship with facerank for ``facerank demo`` (credited in their
    ``CREDITS.md``): ``examples/gallery`` in a checkout, ``facerank/demo_gallery`` in a wheel.

    >>> scan_gallery(demo_gallery()).people[:2]
    ['s1', 's10']
    """
    package = Path(__file__).resolve().parents[1]  # facerank/, above this module's data/
    for folder in (package / "demo_gallery", package.parent / "examples" / "gallery"):
        if folder.is_dir():
            return folder
    raise GalleryError(f"the demo gallery is not installed (looked in {package / 'demo_gallery'}); "
                       "pass --gallery FOLDER (one sub-folder of images per person)")


TRAIN_FOLDER = "train"      # inside a store: training's history, curves, split and checkpoint
SPLIT_FILE = "split.json"   # in TRAIN_FOLDER: which photos trained the model, which were held out


@dataclass(frozen=True)
class SavedSplit:
    """The split a store's model was trained on, as ``(path, person)`` pairs."""

    train: tuple[tuple[str, str], ...]
    test: tuple[tuple[str, str], ...]


def write_split(store_folder: str | Path, train: list[GalleryImage], test: list[GalleryImage], *,
                seed: int, test_fraction: float) -> None:
    """Record the split in the store. Paths are made absolute (not resolved: a linked gallery
    keeps its links), so that evaluation run from another directory finds the photos."""
    from facerank import atomic

    atomic.write_json(Path(store_folder) / TRAIN_FOLDER / SPLIT_FILE, {
        "seed": seed, "test_fraction": test_fraction,
        "train": [[os.path.abspath(i.path), i.person] for i in train],
        "test": [[os.path.abspath(i.path), i.person] for i in test]})


def read_split(store_folder: str | Path) -> SavedSplit | None:
    """The split training recorded in the store, or None where it recorded none.

    >>> read_split("faces/").test[:1]
    (('/photos/ada/3.jpg', 'ada'),)
    """
    path = Path(store_folder) / TRAIN_FOLDER / SPLIT_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
        return SavedSplit(tuple((str(p), str(who)) for p, who in data["train"]),
                          tuple((str(p), str(who)) for p, who in data["test"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StoreError(f"{path}: damaged ({error}); train again to rewrite it") from None
