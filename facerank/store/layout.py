"""Where a store keeps what: the files of one store folder, and the paths its records hold.

    faces/
      model.json  model-<fingerprint>.safetensors   the network and its preprocessing
      store.sqlite (+ -wal, -shm)                   records, vectors, changes: the source of truth
      index-g<generation>-w<change>.faiss           the FAISS index up to that change (derived)
      faces.sqlite                                  detections cached by file content
      uploads/                                      photos added through the server
      train/                                        history, curves, split, checkpoint
      .lock                                         held by whoever writes (facerank.folder_lock)

Records of files inside the store (uploads) are kept relative to it, so a moved store still
finds them; records of files under a synced gallery folder, relative to that folder (the
database's ``galleries``), so a moved gallery is one row changed; any other path is absolute.
``stored_path`` gives the first two kinds their full form; the database places it in a gallery.
"""

from __future__ import annotations

import os
from pathlib import Path

from facerank.data.sources import is_uri

DATABASE_FILE = "store.sqlite"
UPLOAD_FOLDER = "uploads"
#: Format 1 (facerank <= 0.x): store.json naming index-<n>.faiss and records-<n>.jsonl.
LEGACY_STATE_FILE = "store.json"
LEGACY_PATTERNS = ("index-[0-9]*.faiss", "records-[0-9]*.jsonl")


INDEX_FILES = "index-g*-w*.faiss"


def index_file_name(generation: int, watermark: int) -> str:
    """A new index file of ``generation`` holding every change up to ``watermark``; the suffix
    keeps a rebuild at the same watermark from writing over the file queries are reading."""
    return f"index-g{generation}-w{watermark}-{os.urandom(3).hex()}.faiss"


def absolute(path: str | Path) -> str:
    """The key a record's path is compared by: absolute, not resolved (links kept)."""
    return path if is_uri(path) else os.path.abspath(path)


def stored_path(folder: Path, path: str | Path) -> str:
    """How a record keeps ``path``: relative when the store owns the file, else absolute."""
    full = absolute(path)
    inside = absolute(folder / UPLOAD_FOLDER) + os.sep
    if full.startswith(inside):
        return os.path.relpath(full, absolute(folder))
    return full


def resolved_path(folder: Path, stored: str) -> str:
    return stored if os.path.isabs(stored) or is_uri(stored) else absolute(folder / stored)


def is_owned(stored: str) -> bool:
    """Whether a record's stored path is a file the store owns (an upload)."""
    return (not os.path.isabs(stored) and not is_uri(stored)
            and Path(stored).parts[:1] == (UPLOAD_FOLDER,))
