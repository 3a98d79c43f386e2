"""The one lock every writer of a store folder takes: model saves, index changes, calibration.

An exclusive ``flock`` on ``FOLDER/.lock``. The kernel drops it when its holder dies, so a crash
never leaves a store locked. Locks on separate opens of the file exclude each other even within
one process, so two threads writing the same store also take turns.

    >>> with FolderLock("faces/", wait=30):
    ...     model.save("faces/")
"""

from __future__ import annotations

import time
from pathlib import Path

from facerank import atomic
from facerank.errors import StoreLockedError

LOCK_FILE = ".lock"


class FolderLock:
    """Hold ``folder``'s write lock; wait up to ``wait`` seconds for it (None: as long as it takes).

    Raises ``StoreLockedError`` when another writer still holds it after ``wait``. Once held, the
    temporary files of writers that died mid-write are deleted (those of live writers are not).
    """

    def __init__(self, folder: str | Path, *, wait: float | None = 0.0):
        self.folder = Path(folder)
        self.wait = wait
        self._handle = None

    def __enter__(self) -> "FolderLock":
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_FILE, "a+")
        deadline = None if self.wait is None else time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    handle.close()
                    raise StoreLockedError(
                        f"{self.folder} is being written by another process; wait for it to "
                        "finish and try again") from None
                time.sleep(0.05)
        self._handle = handle
        atomic.remove_orphans(self.folder)
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None
