"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every write goes to a temporary file in the same folder, is flushed and fsynced, then renamed over
the target (``os.replace`` is atomic on POSIX and Windows); the folder is fsynced so that the
rename itself survives a power cut.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` atomically.

    >>> with atomic_path("store/index.faiss") as tmp:
    ...     faiss.write_index(index, str(tmp))
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp",
                                    dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        _fsync_file(temporary)
        os.replace(temporary, target)
        _fsync_dir(target.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, value: Any) -> None:
    # ASCII escapes: file names that are not valid UTF-8 (surrogate-escaped) stay writable.
    write_text(target, json.dumps(value, indent=2) + "\n")


def write_with(target: str | Path, writer: Callable[[Path], None]) -> None:
    """Atomically write ``target`` with a function that writes to a path it is given."""
    with atomic_path(target) as temporary:
        writer(temporary)


_TEMPORARY = re.compile(r"^\..+\.(\d+)-[^.]+\.tmp$")


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete the temporary files in ``folder`` left by writers that died mid-write.

    A file whose writer is still alive is left alone, whoever that writer is; files not named
    by ``atomic_path`` are never touched. Returns what was deleted.
    """
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match and not _is_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _is_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate it on Windows: never delete there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
