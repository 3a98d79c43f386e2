"""A store: one directory holding the model, the FAISS index and the per-image records.

    faces/
      model.json  model-<fingerprint>.safetensors   the network and its preprocessing
      store.json                                     which index generation is current
      index-<gen>.faiss  records-<gen>.jsonl         vectors by record id; path, person, sha256
      train/                                         history, curves, split, checkpoint

Every change writes a new generation of the index and records, then switches ``store.json``
to it in one atomic rename: a crash at any moment leaves the previous state intact. The index
records the fingerprint of the model that embedded it; a store whose model has changed since is
never queried with the old vectors (the next write re-embeds them).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from facerank import __version__, atomic
from facerank.errors import (ImageError, NoFaceError, StoreError, StoreLockedError,
                             StoreMismatchError)
from facerank.face_cache import face_finder
from facerank.faces import Face, FaceFinder
from facerank.gallery import scan_gallery
from facerank.images import ImageInput, describe, is_image_input, load_image
from facerank.index import DEFAULT_FACTORY, FaceIndex, choose_index
from facerank.config import CONFIG_FILE, read_config
from facerank.progress import Progress
from facerank.runtime import load_model

FORMAT_VERSION = 1
STATE_FILE = "store.json"
LOCK_FILE = ".lock"
#: Images embedded between two commits of a long build: a crash loses at most this many.
COMMIT_EVERY = 512


@dataclass(frozen=True)
class Record:
    """One indexed image."""

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


@dataclass(frozen=True)
class Prediction:
    """A person the query may be, with the classifier's softmax probability."""

    rank: int
    person: str
    probability: float


@dataclass(frozen=True)
class Verification:
    """Two faces compared: their distance, and a verdict once a threshold is calibrated."""

    distance: float
    threshold: float | None
    same: bool | None


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

    def to_json(self) -> dict:
        return {"face": self.face.to_json() if self.face else None,
                "people": [asdict(p) for p in self.people],
                "matches": [asdict(m) for m in self.matches], "unknown": self.unknown}


@dataclass
class ChangeReport:
    """What a write did: counts, and the files that were skipped with the reason."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    reembedded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # With a face step: photos embedded whole because no face was found (policy "whole"; under
    # "skip" they are in ``skipped``), and photos with several faces, of which the largest was
    # taken as the person's.
    no_face: list[str] = field(default_factory=list)
    several_faces: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def _deduplicate(self) -> "ChangeReport":
        # A re-embed and the sync after it may meet the same faceless file twice in one write.
        self.skipped = list(dict.fromkeys(self.skipped))
        self.no_face = list(dict.fromkeys(self.no_face))
        self.several_faces = list(dict.fromkeys(self.several_faces))
        return self


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FaceStore:
    """A model and its gallery index, opened once to answer many queries.

    >>> store = FaceStore.open("faces/")
    >>> store.closest("photo.jpg", k=3)[0]
    Match(rank=0, person='ada', distance=0.41, path='gallery/ada/2.jpg', id=17)
    >>> store.classify("photo.jpg", top_k=2)
    [Prediction(rank=0, person='ada', probability=0.93), Prediction(rank=1, ...)]
    """

    def __init__(self, folder: Path, model, index: FaceIndex, records: dict[int, Record],
                 state: dict, *, device: str = "cpu", runtime: str | None = None,
                 faces: FaceFinder | None = None):
        self.folder = folder
        self.model = model  # a FaceModel (torch) or an OnnxFaceModel: see facerank.runtime
        self._device, self._runtime = device, runtime
        self._index = index
        self._records = records
        self._state = state
        # The model's face step, with detections cached in the store (see facerank.face_cache).
        self.faces: FaceFinder = faces or face_finder(model.config, folder)
        # Queries from many threads may run while one thread writes: searches and writes take
        # turns on this lock, so a query never sees half of a change.
        self._mutex = threading.RLock()

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path, *, device: str = "cpu", runtime: str | None = None
             ) -> "FaceStore":
        """Open a store made by ``facerank train``; the index may still be empty.

        ``runtime``: ``"auto"`` (default, or ``$FACERANK_RUNTIME``), ``"onnxruntime"`` or
        ``"torch"`` — which engine runs the network; see ``facerank.runtime``.
        """
        folder = Path(folder)
        if not (folder / CONFIG_FILE).exists():
            if not folder.exists():
                raise StoreError(f"no store at {folder}: run `facerank train GALLERY --store "
                                 f"{folder}` to make one")
            raise StoreError(f"{folder} is not a facerank store (no {CONFIG_FILE}); run "
                             f"`facerank train GALLERY --store {folder}`")
        # The face detector loads on another thread while the network loads.
        faces = face_finder(read_config(folder), folder)
        faces.preload()
        model = load_model(folder, device=device, runtime=runtime)
        opened = {"device": device, "runtime": runtime, "faces": faces}
        for attempt in range(5):
            state = _read_state(folder)
            if state is None:
                state = {"format_version": FORMAT_VERSION, "generation": 0, "next_id": 0,
                         "model_identity": model.config.identity,
                         "index_factory": DEFAULT_FACTORY}
                return cls(folder, model, FaceIndex(model.config.embedding_dim), {}, state,
                           **opened)
            try:
                index, records = _read_generation(folder, state)
                break
            except FileNotFoundError:
                # A writer committed twice between our reading store.json and its files:
                # read store.json again, which names files that exist.
                time.sleep(0.05 * (attempt + 1))
        else:
            raise StoreError(f"{folder}: the index named in {STATE_FILE} is missing; rebuild "
                             f"with `facerank index build GALLERY --store {folder}`")
        if sorted(records) != sorted(index.ids.tolist()):
            raise StoreMismatchError(f"{folder}: index ids and records disagree; rebuild with "
                                     f"`facerank index build GALLERY --store {folder}`")
        return cls(folder, model, index, records, state, **opened)

    @property
    def is_stale(self) -> bool:
        """True when the index was embedded by another model than the store's current one."""
        return bool(self._records) and (
            self._state.get("model_identity") != self.model.config.identity
            or self._index.dim != self.model.config.embedding_dim)

    @property
    def records(self) -> list[Record]:
        return sorted(self._records.values(), key=lambda r: r.id)

    @property
    def people(self) -> list[str]:
        """The people the classifier knows (``classify`` answers among these)."""
        return list(self.model.config.people)

    def __len__(self) -> int:
        return len(self._records)

    def record(self, record_id: int) -> Record | None:
        """The record of an indexed image, or None."""
        return self._records.get(int(record_id))

    @property
    def threshold(self) -> float | None:
        """The calibrated same-person distance threshold, if any (see ``calibrate``)."""
        calibration = self._state.get("calibration") or {}
        if calibration.get("model_identity") != self.model.config.identity:
            return None  # calibrated for another model: meaningless now
        return calibration.get("threshold")

    def info(self) -> dict:
        counts: dict[str, int] = {}
        for record in self._records.values():
            counts[record.person] = counts.get(record.person, 0) + 1
        config = self.model.config
        return {
            "store": str(self.folder), "format_version": FORMAT_VERSION,
            "facerank_version": self._state.get("facerank_version", __version__),
            "images": len(self._records), "indexed_people": len(counts),
            "classifier_people": len(config.people), "image_size": config.image_size,
            "embedding_dim": config.embedding_dim,
            "normalized_embeddings": config.normalize_embeddings,
            "weights_origin": config.weights_origin, "model_fingerprint": config.fingerprint,
            "runtime": self.model.runtime, "precision": self.model.precision,
            "index_factory": self._state.get("index_factory", DEFAULT_FACTORY),
            "index_is_stale": self.is_stale, "faces": config.faces.to_json(),
            "images_per_person": dict(sorted(counts.items())),
        }

    # -- queries ---------------------------------------------------------------------------------

    def embed(self, images: ImageInput | Sequence[ImageInput], *, batch_size: int = 32) -> np.ndarray:
        """Embeddings as stored in the index: 1-D for one image, 2-D for a list."""
        single, inputs = self._model_inputs(images)
        vectors = self.model.embed(inputs, batch_size=batch_size)
        return vectors[0] if single else vectors

    def closest(self, images: ImageInput | Sequence[ImageInput], *, k: int = 5
                ) -> list[Match] | list[list[Match]]:
        """The ``k`` nearest gallery images of each query (a list per query for a list)."""
        self._check_queryable()
        single, inputs = self._model_inputs(images)
        vectors = self.model.embed(inputs)
        answers = self._search(vectors, k)
        return answers[0] if single else answers

    def classify(self, images: ImageInput | Sequence[ImageInput], *, top_k: int = 5
                 ) -> list[Prediction] | list[list[Prediction]]:
        """The ``top_k`` most probable people of each query, by the fine-tuned head."""
        single, inputs = self._model_inputs(images)
        _, probabilities = self.model.embed_and_classify(inputs)
        answers = [self._predictions(row, top_k) for row in probabilities]
        return answers[0] if single else answers

    def query(self, images: ImageInput | Sequence[ImageInput], *, k: int = 5, top_k: int = 5):
        """``(closest, classify)`` from one forward pass per image."""
        self._check_queryable()
        single, inputs = self._model_inputs(images)
        vectors, probabilities = self.model.embed_and_classify(inputs)
        matches = self._search(vectors, k)
        predictions = [self._predictions(row, top_k) for row in probabilities]
        return (matches[0], predictions[0]) if single else (matches, predictions)

    def identify(self, images: ImageInput | Sequence[ImageInput], *, k: int = 5, top_k: int = 5,
                 every: bool = True) -> list[FaceAnswer] | list[list[FaceAnswer]]:
        """One answer per face in each photo, largest face first: box, landmarks, top people,
        closest gallery images and, once calibrated, whether the face is unknown.

        A photo without a face gives ``[]`` (under the ``skip`` policy) or one answer for the
        whole image (under ``whole``, with ``face`` None). ``every=False``: the largest face only.

        >>> for face in store.identify("group.jpg"):
        ...     print(face.box, face.people[0].person, face.matches[0].path)
        """
        self._check_queryable()
        single, loaded = _load_all(images)
        per_photo = [self.faces.inputs(image, every=every) for image in loaded]
        flat = [item for inputs in per_photo for item in inputs]
        vectors, probabilities = self.model.embed_and_classify([item.image for item in flat])
        matches = self._search(vectors, k) if flat else []
        answers, position = [], 0
        for inputs in per_photo:
            photo = []
            for item in inputs:
                nearest = matches[position]
                photo.append(FaceAnswer(
                    face=item.face, people=self._predictions(probabilities[position], top_k),
                    matches=nearest, unknown=self.is_unknown(nearest[0] if nearest else None)))
                position += 1
            answers.append(photo)
        return answers[0] if single else answers

    def find_faces(self, image: ImageInput) -> list[Face]:
        """Every face the store's face step finds in ``image``, largest first (no network)."""
        return self.faces.find(load_image(image))

    def _model_inputs(self, images) -> tuple[bool, list]:
        """(was it one image, the network's input for each): its largest face, aligned."""
        single, loaded = _load_all(images)
        sources = [images] if single else list(images)
        inputs = []
        for source, image in zip(sources, loaded):
            found = self.faces.inputs(image)
            if not found:
                raise NoFaceError(describe(source))
            inputs.append(found[0].image)
        return single, inputs

    def verify(self, image_a: ImageInput, image_b: ImageInput) -> Verification:
        """Same person or not, by the distance between the two face prints.

        >>> store.verify("a.jpg", "b.jpg")
        Verification(distance=0.21, threshold=0.24, same=True)
        """
        vectors = self.model.embed(self._model_inputs([image_a, image_b])[1])
        distance = float(np.linalg.norm(vectors[0] - vectors[1]))
        threshold = self.threshold
        return Verification(distance=distance, threshold=threshold,
                            same=None if threshold is None else distance <= threshold)

    def search_vectors(self, vectors: np.ndarray, *, k: int = 5) -> list[list[Match]]:
        """``closest`` for embeddings already computed (by ``embed``)."""
        self._check_queryable()
        return self._search(np.atleast_2d(vectors), k)

    def _search(self, vectors: np.ndarray, k: int) -> list[list[Match]]:
        with self._mutex:
            return self._search_locked(vectors, k)

    def _search_locked(self, vectors: np.ndarray, k: int) -> list[list[Match]]:
        distances, ids = self._index.search(vectors, k)
        answers = []
        for row_distances, row_ids in zip(distances, ids):
            matches = []
            for rank, (distance, record_id) in enumerate(zip(row_distances, row_ids)):
                if record_id < 0:
                    break
                record = self._records[int(record_id)]
                matches.append(Match(rank=rank, person=record.person, distance=float(distance),
                                     path=record.path, id=record.id))
            answers.append(matches)
        return answers

    def _predictions(self, probabilities: np.ndarray, top_k: int) -> list[Prediction]:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        people = self.model.config.people
        return [Prediction(rank=rank, person=people[i], probability=float(probabilities[i]))
                for rank, i in enumerate(order)]

    def _check_queryable(self) -> None:
        if not self._records:
            raise StoreError(f"the index of {self.folder} is empty: run `facerank index build "
                             f"GALLERY --store {self.folder}`")
        if self.is_stale:
            raise StoreMismatchError(
                f"the index of {self.folder} was embedded by another model or preprocessing "
                f"(identity {str(self._state.get('model_identity'))[:12]}, the store's model is "
                f"{self.model.config.identity[:12]}); run `facerank index build GALLERY "
                f"--store {self.folder}` to re-embed it")

    # -- writes ----------------------------------------------------------------------------------

    def add(self, paths: Iterable[str | Path], *, person: str | Sequence[str],
            show_progress: bool = False, commit_every: int = COMMIT_EVERY) -> ChangeReport:
        """Embed and index image files as ``person`` (one name, or one per path).

        A path already indexed with the same content is left as it is; with new content it is
        re-embedded. Unreadable files are skipped and listed in the report.
        """
        paths = [Path(p) for p in paths]
        people = [person] * len(paths) if isinstance(person, str) else list(person)
        if len(people) != len(paths):
            raise ValueError(f"{len(people)} people for {len(paths)} paths")
        for name in set(people):
            _check_person_name(name)
        with self._writing():
            report = ChangeReport()
            self._reembed_if_stale(report, show_progress, commit_every)
            self._fit_index(len(self._records) + len(paths), report, show_progress, commit_every)
            self._ingest(list(zip(paths, people)), report, show_progress, commit_every)
            self._commit()
            return report._deduplicate()

    def remove(self, *, ids: Iterable[int] = (), paths: Iterable[str | Path] = (),
               person: str | None = None) -> ChangeReport:
        """Remove images by record id, by path, or every image of a person."""
        wanted_paths = {_key(p) for p in paths}
        with self._writing():
            doomed = set(int(i) for i in ids) & set(self._records)
            doomed |= {r.id for r in self._records.values() if _key(r.path) in wanted_paths
                       or (person is not None and r.person == person)}
            self._drop(doomed)
            self._commit()
        return ChangeReport(removed=len(doomed))

    def sync_folder(self, gallery: str | Path, *, show_progress: bool = False,
                    commit_every: int = COMMIT_EVERY) -> ChangeReport:
        """Make the index match a gallery folder: embed new and changed files, drop deleted ones.

        Only records whose path lies under ``gallery`` are compared; images added from
        elsewhere are kept. Unchanged files (same size and modification time, or same content)
        are not embedded again.
        """
        scanned = scan_gallery(gallery)
        root = _key(scanned.root)
        with self._writing():
            report = ChangeReport(skipped=list(scanned.problems))
            self._reembed_if_stale(report, show_progress, commit_every)
            present = {_key(image.path): image for image in scanned.images}
            by_path = {_key(r.path): r for r in self._records.values()}
            gone = [r.id for key, r in by_path.items()
                    if key.startswith(root + os.sep) and key not in present]
            self._drop(set(gone))
            report.removed += len(gone)
            todo = [(image.path, image.person) for key, image in present.items()]
            outside = sum(1 for key in by_path if not key.startswith(root + os.sep))
            self._fit_index(len(present) + outside, report, show_progress, commit_every)
            self._ingest(todo, report, show_progress, commit_every)
            self._commit()
            return report._deduplicate()

    def _ingest(self, items: list[tuple[Path, str]], report: ChangeReport, show_progress: bool,
                commit_every: int):
        by_path = {_key(r.path): r for r in self._records.values()}
        pending: list[tuple[Path, str, Record | None]] = []
        for path, person in items:
            old = by_path.get(_key(path))
            if old is not None and old.person == person:
                try:
                    info = os.stat(path)
                except OSError:
                    info = None
                if info and info.st_size == old.size and info.st_mtime_ns == old.mtime_ns:
                    report.unchanged += 1
                    continue
            pending.append((path, person, old))
        if not self._index.is_built:
            # An approximate index trains on the first vectors it is given; galleries come
            # person by person, so a seeded shuffle makes that sample cover everyone.
            random.Random(len(pending)).shuffle(pending)
        self._embed_files(pending, report, show_progress, commit_every)

    def _embed_files(self, pending: list[tuple[Path, str, Record | None]], report: ChangeReport,
                     show_progress: bool, commit_every: int, *, batch_size: int = 32) -> None:
        chunks = [pending[start:start + batch_size] for start in range(0, len(pending), batch_size)]
        progress = Progress(show_progress and len(pending) > 0)
        # One thread reads, hashes and decodes the next chunk while this one is embedded: the
        # network and the decoders release the GIL, so the two overlap (see
        # benchmarks/results/query_latency.md for what it saves).
        # With a face step, finding faces costs as much as embedding them: two reader threads
        # (dlib releases the GIL) detect the next chunk on both cores while this one embeds.
        readers = 2 if self.faces.step.enabled else 1
        with progress, ThreadPoolExecutor(max_workers=readers) as reader:
            task = progress.add("embedding", len(pending))
            since_commit = 0

            def read_ahead(chunk):
                return [reader.submit(_read_file, item, self.faces) for item in chunk]

            upcoming = read_ahead(chunks[0]) if chunks else None
            for number, chunk in enumerate(chunks):
                outcomes = [future.result() for future in upcoming]
                if number + 1 < len(chunks):
                    upcoming = read_ahead(chunks[number + 1])
                images, records, replaced = [], [], []
                for outcome in outcomes:
                    if self.faces.step.enabled and outcome.faces_found == 0 and (
                            outcome.image is not None or outcome.skipped == NO_FACE):
                        report.no_face.append(str(outcome.path))
                    elif outcome.faces_found > 1:
                        report.several_faces.append(str(outcome.path))
                    if outcome.skipped is not None:
                        report.skipped.append((str(outcome.path), outcome.skipped))
                    elif outcome.image is None:
                        # Touched but not changed: remember the new stat, skip the hashing
                        # next time.
                        with self._mutex:
                            self._records[outcome.old.id] = replace(
                                outcome.old, size=outcome.size, mtime_ns=outcome.mtime_ns)
                        report.unchanged += 1
                    else:
                        record_id = int(self._state["next_id"])
                        self._state["next_id"] = record_id + 1
                        images.append(outcome.image)
                        records.append(Record(id=record_id, path=str(_absolute(outcome.path)),
                                              person=outcome.person, sha256=outcome.sha256,
                                              size=outcome.size, mtime_ns=outcome.mtime_ns))
                        replaced.append(outcome.old)
                if images:
                    vectors = self.model.embed(images, batch_size=batch_size)
                    stale = {old.id for old in replaced if old is not None}
                    with self._mutex:
                        self._drop(stale)
                        self._index.add(np.array([r.id for r in records]), vectors)
                        self._records.update((r.id, r) for r in records)
                    report.updated += len(stale)
                    report.added += len(records) - len(stale)
                    since_commit += len(records)
                if since_commit >= commit_every:
                    self._commit()
                    since_commit = 0
                for _ in chunk:
                    progress.advance(task)

    def _reembed_if_stale(self, report: ChangeReport, show_progress: bool,
                          commit_every: int = COMMIT_EVERY) -> None:
        """After a retrain, re-embed every indexed file with the new model."""
        if not self.is_stale:
            return
        self._rebuild(choose_index(len(self._records), self.model.config.embedding_dim),
                      report, show_progress, commit_every)
        self._state["model_identity"] = self.model.config.identity

    def _fit_index(self, expected: int, report: ChangeReport, show_progress: bool,
                   commit_every: int) -> None:
        """Give the index the kind ``choose_index`` picks for ``expected`` images.

        An empty store simply starts with it. A filled one changes kind only once it has
        doubled or halved since its index was chosen, so that a gallery hovering near a
        threshold does not rebuild at every sync.
        """
        plan = choose_index(expected, self.model.config.embedding_dim)
        if plan.factory == self._state.get("index_factory", DEFAULT_FACTORY):
            return
        chosen_for = int(self._state.get("index_chosen_for", len(self._records)) or 1)
        if self._records and chosen_for / 2 < expected < chosen_for * 2:
            return
        self._rebuild(plan, report, show_progress, commit_every)
        self._state["index_chosen_for"] = expected

    def _rebuild(self, plan, report: ChangeReport, show_progress: bool, commit_every: int) -> None:
        """A new index of ``plan``'s kind holding every record: vectors copied from an exact
        index, re-embedded otherwise (approximate codes cannot give the vectors back)."""
        old_index, old = self._index, self.records
        new_index = FaceIndex(self.model.config.embedding_dim, plan=plan)
        self._state["index_factory"] = plan.factory
        if old and old_index.is_exact and not self.is_stale:
            ids = np.array([r.id for r in old], dtype=np.int64)
            np.random.default_rng(0).shuffle(ids)  # a training sample that covers everyone
            vectors = np.stack([old_index.reconstruct(int(i)) for i in ids])
            new_index.add(ids, vectors)
            with self._mutex:
                self._index = new_index
            return
        with self._mutex:
            self._index, self._records = new_index, {}
        pending = [(Path(r.path), r.person, None) for r in old]
        random.Random(0).shuffle(pending)  # a training sample that covers everyone
        before = report.added
        self._embed_files(pending, report, show_progress, commit_every)
        report.reembedded += report.added - before
        report.added = before

    def set_calibration(self, calibration: dict) -> None:
        """Store a verification threshold (see ``facerank.calibrate``) for the current model."""
        with self._writing():
            self._state["calibration"] = {**calibration,
                                          "model_identity": self.model.config.identity}
            self._commit()

    def is_unknown(self, match: Match | None) -> bool | None:
        """Whether a nearest match is too far to name anyone (None: no threshold calibrated)."""
        threshold = self.threshold
        if threshold is None:
            return None
        return match is None or match.distance > threshold

    def _drop(self, ids: set[int]) -> None:
        if ids:
            with self._mutex:
                self._index.remove(np.array(sorted(ids)))
                for record_id in ids:
                    self._records.pop(record_id, None)

    def _commit(self) -> None:
        """Write a new generation of index + records, then switch store.json to it atomically."""
        generation = int(self._state.get("generation", 0)) + 1
        index_file, records_file = f"index-{generation:06d}.faiss", f"records-{generation:06d}.jsonl"
        self._index.save(self.folder / index_file)
        # ASCII escapes keep file names that are not valid UTF-8 (surrogate-escaped) round-trippable.
        lines = (json.dumps(asdict(r)) for r in self.records)
        atomic.write_text(self.folder / records_file, "".join(line + "\n" for line in lines))
        previous = dict(self._state)
        self._state.update(format_version=FORMAT_VERSION, facerank_version=__version__,
                           generation=generation, index_file=index_file,
                           records_file=records_file, count=len(self._records),
                           model_identity=self.model.config.identity,
                           model_fingerprint=self.model.config.fingerprint,
                           embedding_dim=self.model.config.embedding_dim,
                           normalized_embeddings=self.model.config.normalize_embeddings,
                           previous_index_file=previous.get("index_file"),
                           previous_records_file=previous.get("records_file"),
                           updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        atomic.write_json(self.folder / STATE_FILE, self._state)
        # The previous generation stays one commit longer, for a reader that read the old
        # store.json a moment ago; the one before it goes now.
        for name in ("previous_index_file", "previous_records_file"):
            older = previous.get(name)
            if older and older not in (index_file, records_file):
                (self.folder / older).unlink(missing_ok=True)

    def _lock(self):
        return _StoreLock(self.folder / LOCK_FILE)

    @contextmanager
    def _writing(self):
        """Hold the store's lock, starting from what is on disk now, not from when we opened.

        Another process may have committed since this object was opened; writing our older
        snapshot would silently undo its work.
        """
        with self._lock():
            self._refresh()
            yield

    def _refresh(self) -> None:
        on_disk = _read_state(self.folder)
        if read_config(self.folder).fingerprint != self.model.config.fingerprint:
            self.model = load_model(self.folder, device=self._device, runtime=self._runtime)
            self.faces = face_finder(self.model.config, self.folder)
        if on_disk is None or on_disk.get("generation") == self._state.get("generation"):
            return
        index, records = _read_generation(self.folder, on_disk)
        with self._mutex:
            self._index, self._records, self._state = index, records, on_disk


class _StoreLock:
    """An exclusive, non-blocking lock on the store for the duration of a write."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def __enter__(self):
        import fcntl

        self._handle = open(self.path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise StoreLockedError(f"{self.path.parent} is being written by another process; "
                                   "wait for it to finish and try again") from None
        # Holding the lock, no one else is writing: temporary files left now were orphaned by a
        # writer that died mid-write.
        for orphan in self.path.parent.glob(".*.tmp"):
            orphan.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def _read_state(folder: Path) -> dict | None:
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise StoreError(f"{path}: damaged ({error}); rebuild the index with `facerank index "
                         f"build GALLERY --store {folder}`") from None
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"{folder} uses store format {version}, this facerank "
                         f"({__version__}) reads format {FORMAT_VERSION}; use a matching "
                         "facerank version or rebuild the index")
    return state


def _read_generation(folder: Path, state: dict) -> tuple[FaceIndex, dict[int, "Record"]]:
    index_path, records_path = folder / state["index_file"], folder / state["records_file"]
    if not index_path.exists() or not records_path.exists():
        raise FileNotFoundError(index_path)
    try:
        index = FaceIndex.load(index_path, factory=state.get("index_factory", DEFAULT_FACTORY))
        records = _read_records(records_path)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as error:
        raise StoreError(f"{folder}: the index or its records cannot be read ({error}); "
                         f"rebuild with `facerank index build GALLERY --store {folder}`") from None
    return index, records


def _read_records(path: Path) -> dict[int, Record]:
    records = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = Record(**json.loads(line))
                records[record.id] = record
    return records


def _load_all(images) -> tuple[bool, list]:
    """(was it a single image, the images loaded as RGB)."""
    if is_image_input(images):
        return True, [load_image(images)]
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"expected an image or a list of images, got {describe(images)}")
    return False, [load_image(image) for image in images]


@dataclass
class _Read:
    """What reading one gallery file gave: an image to embed, an unchanged file, or a skip."""

    path: Path
    person: str
    old: Record | None
    image: object = None           # a PIL image to embed: the aligned face, or the whole image
    faces_found: int = 0           # how many faces the face step found
    sha256: str = ""
    size: int = 0
    mtime_ns: int = 0
    skipped: str | None = None     # why the file was skipped


NO_FACE = "no face found"


def _read_file(item: tuple[Path, str, Record | None], faces: FaceFinder) -> _Read:
    """Stat, hash, decode a file and find its face; no store state is touched (this runs on a
    reader thread)."""
    path, person, old = item
    outcome = _Read(path, person, old)
    try:
        info = os.stat(path)
        outcome.size, outcome.mtime_ns = info.st_size, info.st_mtime_ns
        outcome.sha256 = file_sha256(path)
        if not (old is not None and old.sha256 == outcome.sha256 and old.person == person):
            image = load_image(path)
            found = faces.find(image, key=outcome.sha256)
            outcome.faces_found = len(found)
            inputs = faces.inputs(image, faces=found)
            if inputs:
                outcome.image = inputs[0].image
            else:
                outcome.skipped = NO_FACE
    except ImageError as error:
        outcome.skipped = error.reason
    except OSError as error:
        outcome.skipped = error.strerror or str(error)
    return outcome


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(path))


def _key(path: str | Path) -> str:
    return str(_absolute(path))


def _check_person_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a person's name must be a non-empty string, got {name!r}")
