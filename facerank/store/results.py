"""What a store holds and answers with: records, matches, predictions, verdicts, change reports.

Small frozen dataclasses, free of FAISS, torch and SQLite types, shared by the store's queries,
its writers, the CLI and the server.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from facerank.faces.detection import Face


@dataclass(frozen=True)
class Record:
    """One indexed image: its file, whose face it is, and the content it was embedded from."""

    id: int
    path: str
    person: str
    sha256: str
    size: int = 0
    mtime_ns: int = 0


@dataclass(frozen=True)
class Match:
    """A gallery image near the query: ``rank`` 0 is the closest."""

    rank: int
    person: str
    distance: float   # Euclidean, in the space of the stored embeddings
    path: str
    id: int

    def to_json(self, *, folders: bool = True) -> dict:
        """``folders=False``: the file's name only, as the REST API gives it (a server's folders
        are none of its clients' business)."""
        return {**asdict(self), "path": _shown(self.path, folders)}


@dataclass(frozen=True)
class Prediction:
    """A person the query may be, with the classifier's softmax probability."""

    rank: int
    person: str
    probability: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verification:
    """Two faces compared: their distance, and a verdict once a threshold is calibrated."""

    distance: float
    threshold: float | None
    same: bool | None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FaceAnswer:
    """The answer for one face of a photo: where it is, who it may be, what it is closest to.

    ``face`` is None when the store has no face step or found no face and used the whole image
    (then ``box`` is None). ``unknown`` is None until a threshold is calibrated.
    """

    face: Face | None
    people: list[Prediction]
    matches: list[Match]
    unknown: bool | None

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        return self.face.box if self.face else None

    def to_json(self, *, folders: bool = True) -> dict:
        return {"face": self.face.to_json() if self.face else None,
                "people": [p.to_json() for p in self.people],
                "matches": [m.to_json(folders=folders) for m in self.matches],
                "unknown": self.unknown}


@dataclass(frozen=True)
class PhotoAnswer:
    """What one photo of a query got: an answer per face (largest first) and the threshold that
    decided ``unknown`` (the store's ``unknown_threshold``), or the error that stopped it (then
    ``faces`` is empty).

    The CLI's ``--json`` (a line per photo) and the REST API both answer with its ``to_json``, so
    the two cannot drift.
    """

    photo: str
    faces: list[FaceAnswer]
    threshold: float | None = None
    error: str | None = None    # why this photo got no answer (unreadable, not an image, ...)
    # The store's face step found no face in it: ``faces`` is empty (its policy skips such
    # photos) or holds one answer for the whole image (``face`` None). Never true for a store
    # without a face step, whose answers are always for the whole image.
    no_face: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self, *, folders: bool = True) -> dict:
        return {"photo": self.photo,
                "faces": [face.to_json(folders=folders) for face in self.faces],
                "threshold": self.threshold, "no_face": self.no_face, "error": self.error}


@dataclass(frozen=True)
class PhotoPeople:
    """``classify`` for one photo of a batch: the largest face's people, or why there are none.
    The line ``facerank classify --json`` prints and ``/classify`` answers."""

    photo: str
    people: list[Prediction]
    no_face: bool = False
    error: str | None = None

    def to_json(self) -> dict:
        return {"photo": self.photo, "people": [p.to_json() for p in self.people],
                "no_face": self.no_face, "error": self.error}


@dataclass(frozen=True)
class PhotoMatches:
    """``closest`` for one photo of a batch: the largest face's nearest gallery images, or why
    there are none. The line ``facerank closest --json`` prints and ``/closest`` answers."""

    photo: str
    matches: list[Match]
    no_face: bool = False
    error: str | None = None

    def to_json(self, *, folders: bool = True) -> dict:
        return {"photo": self.photo, "matches": [m.to_json(folders=folders) for m in self.matches],
                "no_face": self.no_face, "error": self.error}


@dataclass(frozen=True)
class PhotoFaces:
    """The faces found in one photo (no network), largest first, with the photo's size; or why
    it could not be read. The line ``facerank faces --json`` prints and ``/faces`` answers."""

    photo: str
    faces: list[Face]
    width: int | None = None
    height: int | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return {"photo": self.photo, "width": self.width, "height": self.height,
                "faces": [face.to_json() for face in self.faces], "error": self.error}


@dataclass
class ChangeReport:
    """What a write did: counts, and the files that were skipped with the reason."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    reembedded: int = 0
    moved: int = 0      # records whose file was found at a new path (same content): not re-embedded
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # With a face step: photos embedded whole because no face was found (policy "whole"; under
    # "skip" they are in ``skipped``), and photos with several faces, of which the largest was
    # taken as the person's.
    no_face: list[str] = field(default_factory=list)
    several_faces: list[str] = field(default_factory=list)

    def to_json(self, *, folders: bool = True) -> dict:
        return {**asdict(self),
                "skipped": [(_shown(path, folders), why) for path, why in self.skipped],
                "no_face": [_shown(path, folders) for path in self.no_face],
                "several_faces": [_shown(path, folders) for path in self.several_faces]}

    def deduplicate(self) -> "ChangeReport":
        # A re-embed and the sync after it may meet the same faceless file twice in one write.
        self.skipped = list(dict.fromkeys(self.skipped))
        self.no_face = list(dict.fromkeys(self.no_face))
        self.several_faces = list(dict.fromkeys(self.several_faces))
        return self


def _shown(path: str, folders: bool) -> str:
    return path if folders else Path(path).name


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
