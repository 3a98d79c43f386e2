"""Detections cached per file content, so that no photo is searched for faces twice.

Finding faces costs more than embedding them on small photos; a re-run of ``index build``, a
retrain or a calibration meets the same files again. The cache is one SQLite file in the store
(``faces.sqlite``), keyed by the file's sha256 and the search (``FaceStep.detection_key``):
a changed file or another detector is a miss, a renamed file is a hit. Several processes may
share it: SQLite's WAL mode lets readers and one writer work at once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

from PIL import Image

from facerank.errors import ImageError
from facerank.faces.detection import Face, FaceFinder
from facerank.data.images import load_image

CACHE_FILE = "faces.sqlite"


class DetectionCache:
    """``get``/``put`` the faces found in a file, by (sha256, detection key).

    >>> cache = DetectionCache("faces/faces.sqlite")
    >>> cache.get(sha256, step.detection_key())     # None: not detected yet
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()  # sqlite3 connections belong to one thread
        self._opened: list[sqlite3.Connection] = []
        self._opened_lock = threading.Lock()
        self.hits = self.misses = 0
        self.usable = True  # False once the file proved unwritable: detect, do not cache

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # Used by its own thread only; closable from another one (see close).
            connection = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")  # a lost entry is only re-detected
            connection.execute("CREATE TABLE IF NOT EXISTS detections (sha256 TEXT NOT NULL, "
                               "detector TEXT NOT NULL, faces TEXT NOT NULL, "
                               "PRIMARY KEY (sha256, detector)) WITHOUT ROWID")
            self._local.connection = connection
            with self._opened_lock:
                self._opened.append(connection)
        return connection

    def close(self) -> None:
        """Close the connections this cache opened, on every thread. The last one to close folds
        SQLite's write-ahead log into the file, so that the store folder is whole on disk now,
        not whenever worker threads' connections happen to be collected (a copy of the folder
        taken in between would miss the entries still in the log). Later calls reopen."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        self._local = threading.local()
        for connection in opened:
            try:
                connection.close()
            except sqlite3.Error:
                pass

    def get(self, sha256: str, detector: str) -> list[Face] | None:
        if not self.usable:
            return None
        try:
            row = self._connection().execute(
                "SELECT faces FROM detections WHERE sha256 = ? AND detector = ?",
                (sha256, detector)).fetchone()
        except sqlite3.Error:
            # A read-only or damaged cache costs speed, never an answer.
            self.usable = False
            return None
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return [Face.from_json(face) for face in json.loads(row[0])]

    def put(self, sha256: str, detector: str, faces: list[Face]) -> None:
        if not self.usable:
            return
        try:
            with self._connection() as connection:
                connection.execute(
                    "INSERT OR REPLACE INTO detections (sha256, detector, faces) VALUES (?, ?, ?)",
                    (sha256, detector, json.dumps([face.to_json() for face in faces])))
        except sqlite3.Error:
            self.usable = False

    def __len__(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM detections").fetchone()[0]


def face_finder(config, folder: str | Path | None) -> FaceFinder:
    """The face step of a model (a ``ModelConfig``), caching detections in ``folder``."""
    cache = DetectionCache(Path(folder) / CACHE_FILE) if folder is not None else None
    return FaceFinder(config.faces, size=config.image_size, cache=cache)


def read_file_input(finder: FaceFinder, path: str | Path) -> tuple[Image.Image | None, int]:
    """(the network's input for a gallery file, how many faces it holds).

    The input is the largest face aligned, the whole image when no face is found and the policy
    is ``whole``, or None when it is ``skip``. Raises ``ImageError`` for an unreadable file.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ImageError(str(path), error.strerror or str(error)) from None
    try:
        image = load_image(data)
    except ImageError as error:  # bytes have no name: give the file's
        raise ImageError(str(path), error.reason) from None
    # A gallery photo is its largest face: the quicker search (see UPSAMPLE_BELOW).
    faces = finder.find(image, key=hashlib.sha256(data).hexdigest(), every=False)
    inputs = finder.inputs(image, faces=faces)
    return (inputs[0].image if inputs else None), len(faces)
