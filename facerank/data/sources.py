"""Where a gallery's files are read from: a local path, or a URI that pyarrow's filesystems open
(``s3://bucket/photos/ada/1.jpg``, ``gs://...``, ``file:///data/photos/...``).

A URI is kept as given, never through ``pathlib`` (which folds ``s3://`` into ``s3:/``). Its
file system is named by the scheme and the first part of the path (the bucket); the rest is the
file's path inside it, used as it is (spaces, ``#`` and ``?`` included), never parsed as a URL.

>>> read_source("s3://bucket/photos/ada/1.jpg")   # (content, size, mtime_ns)
"""

from __future__ import annotations

import os
from pathlib import Path

from facerank.errors import MissingExtraError


def is_uri(path: str | Path) -> bool:
    """Whether ``path`` names a file through a URI scheme (``s3://bucket/a.jpg``)."""
    return isinstance(path, str) and "://" in path


def as_source(path: str | Path) -> str | Path:
    """A URI as it is, anything else as a ``Path``."""
    return path if is_uri(path) else Path(path)


def split_uri(uri: str):
    """(pyarrow file system, path inside it) of a URI."""
    try:
        from pyarrow import fs as pafs
    except ImportError:
        raise MissingExtraError(f"reading {uri} needs pyarrow: pip install pyarrow (the ray extra "
                                "brings it)") from None
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        return pafs.LocalFileSystem(), rest
    bucket = rest.split("/", 1)[0]
    try:
        filesystem = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]
    except (ValueError, OSError) as error:  # pyarrow.ArrowInvalid is a ValueError
        raise OSError(f"cannot open the file system of {uri} ({error})") from None
    return filesystem, rest


def read_source(path: str | Path, filesystem=None) -> tuple[bytes, int, int]:
    """(content, size, mtime_ns) of a local file or of a URI; ``filesystem``: the one the URI
    was listed with (its options, such as an S3 endpoint, kept). OSError when unreadable."""
    if not is_uri(path):
        with Path(path).open("rb") as stream:
            info = os.fstat(stream.fileno())
            return stream.read(), info.st_size, info.st_mtime_ns
    from pyarrow import fs as pafs

    if filesystem is None:
        filesystem, inner = split_uri(path)
    else:
        inner = path.split("://", 1)[1]
    try:
        info = filesystem.get_file_info(inner)
        if info.type != pafs.FileType.File:
            raise OSError(2, "no such file", path)
        with filesystem.open_input_file(inner) as stream:
            data = stream.read()
    except ValueError as error:  # pyarrow's ArrowInvalid: a path it cannot take
        raise OSError(f"cannot read {path} ({error})") from None
    return data, int(info.size if info.size is not None else len(data)), int(info.mtime_ns or 0)
