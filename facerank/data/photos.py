"""Which photos a query names: files as given, every image in a folder, every image a glob matches.

A file is kept as it is, readable or not (a missing file or a text file is answered with its own
error later, so the rest of a batch is still answered). A folder gives every image under it,
recursively, sorted, hidden files and folders left out; a glob (``photos/*.jpg``,
``photos/**/*.png``) every image it matches, sorted. Images are the files whose suffix is in
``facerank.data.images.IMAGE_SUFFIXES``. A folder or a glob that names no image is an error that
names it: a batch that silently shrinks to nothing is worse than one that stops.

>>> expand_photos(["me.jpg", "holiday/", "scans/*.png"])
[PosixPath('me.jpg'), PosixPath('holiday/a.jpg'), PosixPath('holiday/day2/b.jpg'), ...]
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable

from facerank.data.images import IMAGE_SUFFIXES
from facerank.errors import ImageError

_GLOB_CHARACTERS = frozenset("*?[")


def expand_photos(queries: Iterable[str | Path]) -> list[Path]:
    """The photos ``queries`` name, in the order given: each file as it is, each folder's images
    (recursively, sorted), each glob's images (sorted).

    Raises ``ImageError`` naming the folder or pattern that holds no image.

    >>> expand_photos(["GALLERY/s1"])[:2]            # sorted as text: 10 before 2
    [PosixPath('GALLERY/s1/1.pgm'), PosixPath('GALLERY/s1/10.pgm')]
    >>> len(expand_photos(["GALLERY/s1/1.pgm", "GALLERY/*/2.pgm", "missing.jpg"]))
    7
    """
    if isinstance(queries, (str, Path)):
        queries = [queries]
    photos: list[Path] = []
    for query in queries:
        path = Path(query)
        if path.is_dir():
            found = _images_under(path)
            if not found:
                raise ImageError(str(query), f"no image in this folder (looked for "
                                             f"{_suffixes()}, recursively); point at a folder of "
                                             "photos")
            photos.extend(found)
        elif not path.exists() and _GLOB_CHARACTERS & set(str(query)):
            found = _images_matching(str(query))
            if not found:
                raise ImageError(str(query), f"no image matches this pattern (looked for "
                                             f"{_suffixes()}); check the pattern, and quote it "
                                             "so that the shell leaves it to facerank")
            photos.extend(found)
        else:
            photos.append(path)  # missing or unreadable: answered with its own error later
    return photos


def _images_under(folder: Path) -> list[Path]:
    found = []
    # Links to folders are not followed (no loops); links to files are kept.
    for root, dirnames, filenames in os.walk(folder):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        found.extend(Path(root) / name for name in filenames
                     if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found)


def _images_matching(pattern: str) -> list[Path]:
    found = set()
    for match in glob.glob(os.path.expanduser(pattern), recursive=True):
        path = Path(match)
        if path.is_dir():
            found.update(_images_under(path))
        elif path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.add(path)
    return sorted(found)


def _suffixes() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))
