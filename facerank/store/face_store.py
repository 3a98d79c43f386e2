"""``FaceStore``: a model and its gallery index, opened once to answer many queries.

Queries read the current snapshot once (``facerank.store.snapshot``) and answer from it; a
write takes the folder's lock, works through ``facerank.store.ingest`` and publishes a new
snapshot after each commit. Another process's commits are picked up at the next query (the
database's version is one cheap read).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from collections.abc import Iterable
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from facerank import __version__
from facerank.model.config import CONFIG_FILE, read_config
from facerank.errors import ImageError, NoFaceError, StoreError, StoreMismatchError, UsageError
from facerank.faces.cache import face_finder
from facerank.faces.detection import Face
from facerank.folder_lock import FolderLock
from facerank.progress import Progress
from facerank.data.sources import is_uri
from facerank.data.images import (ImageInput, ImageInputs, describe, image_items, item_name,
                                  load_image, load_item)
from facerank.search.index import DEFAULT_FACTORY, IndexPlan, choose_index
from facerank.search.tuning import Tuning
from facerank.model.runtime import load_model
from facerank.store import layout
from facerank.store.database import Database
from facerank.store.ingest import COMMIT_EVERY, Engine, LocalEngine, Writer
from facerank.store.migrate import FORMAT, prepare
from facerank.store.results import (ChangeReport, FaceAnswer, Match, PhotoAnswer, Prediction,
                                    Record, Verification)
from facerank.store.snapshot import Snapshot, read_snapshot
from facerank.store.tuning import tune_base
from facerank.units import parse_latency, parse_size
from facerank.vectors import distance as face_distance

#: How long a write waits for another writer to finish before saying the store is busy.
LOCK_WAIT = 10.0


class FaceStore:
    """A model and its gallery index, opened once to answer many queries.

    >>> store = facerank.FaceStore.open("faces/")     # or facerank.open("faces/"), cached
    >>> store.closest("photo.jpg", k=3)[0]
    Match(rank=0, person='s1', distance=..., path='.../GALLERY/s1/1.pgm', id=...)
    >>> store.classify("photo.jpg", top_k=2)
    [Prediction(rank=0, person=..., probability=...), Prediction(rank=1, ...)]
    """

    def __init__(self, folder: Path, database: Database, snapshot: Snapshot, *,
                 device: str = "cpu", runtime: str | None = None,
                 lock_wait: float | None = LOCK_WAIT):
        self.folder = folder
        self.database = database
        self._snapshot = snapshot
        self._device, self._runtime = device, runtime
        self.lock_wait = lock_wait
        self._refreshing = threading.Lock()
        self._writing_here = threading.Lock()  # the flock excludes other threads too; this
        # lets them queue instead of failing after lock_wait

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path, *, device: str = "cpu", runtime: str | None = None,
             lock_wait: float | None = LOCK_WAIT) -> "FaceStore":
        """Open a store made by ``facerank train``; the index may still be empty.

        ``runtime``: ``"auto"`` (default, or ``$FACERANK_RUNTIME``), ``"onnxruntime"`` or
        ``"torch"`` — which engine runs the network; see ``facerank.model.runtime``. ``lock_wait``:
        seconds a write waits for another writer (None: as long as it takes). A store of an
        older format is migrated on first open.

        >>> store = facerank.FaceStore.open("faces/")
        >>> store.people, len(store)            # who the classifier knows; images indexed
        (['s1', 's2', 's3', 's4', 's5'], 50)
        >>> facerank.FaceStore.open("nowhere/")
        Traceback (most recent call last):
        facerank.errors.StoreError: no store at nowhere: run `facerank train GALLERY --store ...
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
        database = Database(folder / layout.DATABASE_FILE)
        prepare(folder, database, model.config, lock_wait=lock_wait)
        snapshot = read_snapshot(folder, database, model, faces)
        return cls(folder, database, snapshot, device=device, runtime=runtime,
                   lock_wait=lock_wait)

    def snapshot(self) -> Snapshot:
        """The store's current state, as one query should read it (refreshed if another
        process or thread committed since). Internal plumbing: queries call it themselves.

        >>> snapshot = store.snapshot()       # model, index and records as of one commit
        >>> snapshot.count, snapshot.dim
        (50, 2048)
        """
        snapshot = self._snapshot
        with self.database.reading() as sql:
            version = Database.version(sql)
        if version == snapshot.version:
            return snapshot
        with self._refreshing:
            if self._snapshot.version != snapshot.version:
                return self._snapshot  # another thread refreshed meanwhile
            model, faces = snapshot.model, snapshot.faces
            if read_config(self.folder).fingerprint != model.config.fingerprint:
                model = load_model(self.folder, device=self._device, runtime=self._runtime)
                faces = face_finder(model.config, self.folder)
            fresh = read_snapshot(self.folder, self.database, model, faces, previous=snapshot)
            if fresh.version >= self._snapshot.version:  # a writer may have published since
                self._snapshot = fresh
            return self._snapshot

    def _publish(self, snapshot: Snapshot) -> None:
        with self._refreshing:
            self._snapshot = snapshot

    # -- what it holds ---------------------------------------------------------------------------

    @property
    def model(self):
        """The network answering queries: a FaceModel (torch) or an OnnxFaceModel."""
        return self.snapshot().model

    @property
    def faces(self):
        """The model's face step, with detections cached in the store."""
        return self.snapshot().faces

    @property
    def is_stale(self) -> bool:
        """True when the index was embedded by another model than the store's current one."""
        snapshot = self.snapshot()
        if snapshot.is_stale:
            return True
        on_disk = read_config(self.folder)
        return snapshot.records > 0 and on_disk.identity != snapshot.model_identity

    @property
    def records(self) -> list[Record]:
        with self.database.reading() as sql:
            return [self._resolved(r) for r in Database.records(sql)]

    @property
    def people(self) -> list[str]:
        """The people the classifier knows (``classify`` answers among these)."""
        return list(self.model.config.people)

    def __len__(self) -> int:
        return self.snapshot().count

    def record(self, record_id: int) -> Record | None:
        """The record of an indexed image, or None.

        >>> match = store.closest("photo.jpg", k=1)[0]
        >>> store.record(match.id).path == match.path, store.record(10**9)
        (True, None)
        """
        with self.database.reading() as sql:
            found = Database.records_by_id(sql, [record_id]).get(int(record_id))
        return None if found is None else self._resolved(found)

    @property
    def threshold(self) -> float | None:
        """The calibrated same-person distance threshold for a pair (``verify``), if any (see
        ``calibrate``)."""
        return _threshold(self.snapshot())

    @property
    def unknown_threshold(self) -> float | None:
        """The distance beyond which a query's nearest gallery image names no one (1:N), if
        calibrated; a calibration made before the gallery was indexed gives the pair threshold."""
        return _unknown_threshold(self.snapshot())

    def info(self) -> dict:
        """What the store holds and how it answers (``facerank index info`` prints it).

        >>> info = store.info()
        >>> info["images"], info["embedding_dim"], info["images_per_person"]["s1"]
        (50, 2048, 10)
        """
        snapshot = self.snapshot()
        with self.database.reading() as sql:
            counts = Database.people_counts(sql)
        config = snapshot.model.config
        meta = snapshot.meta
        return {
            "store": str(self.folder), "format_version": FORMAT,
            "facerank_version": meta.get("created_by", __version__),
            "images": snapshot.count, "indexed_people": len(counts),
            "classifier_people": len(config.people), "image_size": config.image_size,
            "embedding_dim": config.embedding_dim,
            "normalized_embeddings": config.normalize_embeddings,
            "weights_origin": config.weights_origin, "model_fingerprint": config.fingerprint,
            "runtime": snapshot.model.runtime, "precision": snapshot.model.precision,
            "index_factory": meta.get("index_factory", DEFAULT_FACTORY),
            "index_search_parameters": snapshot.base.parameters,
            "index_tuning": _tuning_summary(meta.get("index_tuning")),
            "index_memory_budget": meta.get("index_memory_budget"),
            "index_is_stale": self.is_stale, "faces": config.faces.to_json(),
            "threshold": _threshold(snapshot),
            # The false-accept rate the threshold was calibrated at (None: not calibrated).
            "threshold_far": _calibration(snapshot).get("far"),
            # "unknown" beyond it: the nearest gallery image (1:N), calibrated on a gallery
            # of calibrated_gallery_images (None: not calibrated, or without a gallery).
            "unknown_threshold": _calibration(snapshot).get("unknown_threshold"),
            "calibrated_gallery_images": _calibration(snapshot).get("gallery_images"),
            "pending_changes": len(snapshot.delta) + len(snapshot.removed),
            "images_per_person": dict(sorted(counts.items())),
        }

    # -- queries ---------------------------------------------------------------------------------

    def embed(self, images: ImageInputs, *, batch_size: int = 32, show_progress: bool = False
              ) -> np.ndarray:
        """Face prints as the index holds them, shaped as sentence-transformers' ``encode``
        gives them: ``(2048,)`` for one image; ``(n, 2048)`` for many (a list, tuple, generator
        or any iterable, or an ``N x H x W x 3`` array), ``(0, 2048)`` for none.

        Many images are read ``batch_size`` at a time, embedded and let go, so memory follows
        the batch, not the input's length. ``show_progress``: a bar on stderr. A photo that
        cannot be read stops the call with an ``ImageError`` naming its position and path
        (``identify_each`` answers the rest instead).

        >>> store.embed("a.jpg").shape
        (2048,)
        >>> from pathlib import Path
        >>> store.embed(Path("GALLERY").rglob("*.pgm"), batch_size=16).shape   # a generator
        (50, 2048)
        """
        snapshot = self.snapshot()
        single, parts = _in_batches(
            images, batch_size, show_progress, "embedding",
            lambda batch: snapshot.model.embed(_largest_faces(snapshot, batch),
                                               batch_size=batch_size))
        if single:
            return parts[0][0]
        if not parts:
            return np.zeros((0, snapshot.model.config.embedding_dim), np.float32)
        return np.concatenate(parts)

    def closest(self, images: ImageInputs, *, k: int = 5, batch_size: int = 32,
                show_progress: bool = False) -> list[Match] | list[list[Match]]:
        """The ``k`` nearest gallery images of one image, or a list of them per image for many
        (taken as ``embed`` takes them, streamed ``batch_size`` at a time).

        >>> store.closest("photo.jpg", k=2)
        [Match(rank=0, person='s1', distance=..., path='.../s1/...', id=...), Match(rank=1, ...)]
        >>> [len(matches) for matches in store.closest(["a.jpg", "b.jpg"], k=3)]
        [3, 3]
        """
        _check_count("k", k)
        snapshot = self._queryable()
        single, answers = _in_batches(
            images, batch_size, show_progress, "searching",
            lambda batch: self._search(snapshot, snapshot.model.embed(
                _largest_faces(snapshot, batch), batch_size=batch_size), k))
        return _one_or_all(single, answers)

    def classify(self, images: ImageInputs, *, top_k: int = 5, batch_size: int = 32,
                 show_progress: bool = False) -> list[Prediction] | list[list[Prediction]]:
        """The ``top_k`` most probable people of one image by the fine-tuned head, or a list of
        them per image for many (taken as ``embed`` takes them).

        >>> store.classify("photo.jpg", top_k=2)
        [Prediction(rank=0, person=..., probability=...), Prediction(rank=1, ...)]
        >>> len(store.classify(("a.jpg", "b.jpg", "c.jpg"), top_k=1))
        3
        """
        _check_count("top_k", top_k)
        snapshot = self.snapshot()

        def answer(batch):
            _, probabilities = snapshot.model.embed_and_classify(
                _largest_faces(snapshot, batch), batch_size=batch_size)
            return [_predictions(snapshot, row, top_k) for row in probabilities]

        single, answers = _in_batches(images, batch_size, show_progress, "classifying", answer)
        return _one_or_all(single, answers)

    def identify(self, images: ImageInputs, *, k: int = 5, top_k: int = 5, every: bool = True,
                 batch_size: int = 32, show_progress: bool = False
                 ) -> list[FaceAnswer] | list[list[FaceAnswer]]:
        """One answer per face in each photo, largest face first: box, landmarks, top people,
        closest gallery images and, once calibrated, whether the face is unknown. One photo
        gives its list of answers; many (taken as ``embed`` takes them) a list per photo.

        A photo without a face gives ``[]`` (under the ``skip`` policy) or one answer for the
        whole image (under ``whole``, with ``face`` None). ``every=False``: the largest face only.
        Before the index is built the people are answered and ``matches`` are empty.

        >>> faces = store.identify("group.jpg")
        >>> faces[0].people[0].person in store.people, len(faces[0].matches)
        (True, 5)
        >>> [len(faces) for faces in store.identify(["photo.jpg", "a.jpg"], every=False)]
        [1, 1]
        """
        _check_count("k", k)
        _check_count("top_k", top_k)
        snapshot = self._queryable(empty_ok=True)
        threshold = _unknown_threshold(snapshot)

        def answer(batch):
            per_photo = [snapshot.faces.inputs(image, every=every) for _, image in batch]
            return self._face_answers(snapshot, per_photo, k, top_k, threshold, batch_size)

        single, answers = _in_batches(images, batch_size, show_progress, "identifying", answer)
        return _one_or_all(single, answers)

    def identify_each(self, photos: Iterable[ImageInput], *, k: int = 5, top_k: int = 5,
                      every: bool = True, batch_size: int = 32, show_progress: bool = False
                      ) -> Iterator[PhotoAnswer]:
        """``identify`` for a batch that must not stop at its first bad photo: one
        ``PhotoAnswer`` per photo, in order, as each ``batch_size`` of them is answered.

        A photo that cannot be read (missing, not an image, truncated, too large) gets
        ``error`` naming the file and the fault, and no faces; every other photo is answered.
        Problems of the store itself (another model's index; an empty one only leaves
        ``matches`` empty, as in ``identify``) and bad arguments still raise, before any photo
        is read. Every answer comes from one snapshot of the store, as if the batch were one
        query.

        >>> answers = list(store.identify_each(["photo.jpg", "missing.jpg", "group.jpg"]))
        >>> [len(answer.faces) for answer in answers]        # the missing photo did not stop it
        [1, 0, 2]
        >>> answers[1].error
        'missing.jpg: no such file'
        """
        for name, value in (("k", k), ("top_k", top_k), ("batch_size", batch_size)):
            _check_count(name, value)
        single, items = image_items(photos)  # one photo, or any iterable of them (as identify)
        total = 1 if single else (len(photos) if hasattr(photos, "__len__") else None)
        snapshot = self._queryable(empty_ok=True)
        threshold = _unknown_threshold(snapshot)
        chunk: list[ImageInput] = []
        with Progress(show_progress) as progress:
            task = progress.add("identifying", total)
            for photo in items:
                chunk.append(photo)
                if len(chunk) == batch_size:
                    yield from self._answer_chunk(snapshot, chunk, k, top_k, every, threshold,
                                                  batch_size)
                    progress.advance(task, len(chunk))
                    chunk = []
            if chunk:
                yield from self._answer_chunk(snapshot, chunk, k, top_k, every, threshold,
                                              batch_size)
                progress.advance(task, len(chunk))

    def _answer_chunk(self, snapshot: Snapshot, photos: list[ImageInput], k: int, top_k: int,
                      every: bool, threshold: float | None, batch_size: int
                      ) -> list[PhotoAnswer]:
        per_photo: list[list | ImageError] = []
        for photo in photos:
            try:
                per_photo.append(snapshot.faces.inputs(load_image(photo), every=every))
            except ImageError as error:  # this photo's fault only: the others are answered
                per_photo.append(error)
        readable = [inputs for inputs in per_photo if not isinstance(inputs, ImageError)]
        answered = iter(self._face_answers(snapshot, readable, k, top_k, threshold, batch_size))
        step_on = snapshot.faces.step.enabled
        answers = []
        for photo, inputs in zip(photos, per_photo):
            if isinstance(inputs, ImageError):
                answers.append(PhotoAnswer(photo=describe(photo), faces=[], threshold=threshold,
                                           error=str(inputs)))
                continue
            faces = next(answered)
            no_face = step_on and (not faces or faces[0].face is None)
            answers.append(PhotoAnswer(photo=describe(photo), faces=faces, threshold=threshold,
                                       no_face=no_face))
        return answers

    def _face_answers(self, snapshot: Snapshot, per_photo: list[list], k: int, top_k: int,
                      threshold: float | None, batch_size: int = 32) -> list[list[FaceAnswer]]:
        """The answers for each photo's face inputs: one forward pass and one search for all."""
        flat = [item for inputs in per_photo for item in inputs]
        if not flat:
            return [[] for _ in per_photo]
        vectors, probabilities = snapshot.model.embed_and_classify(
            [item.image for item in flat], batch_size=batch_size)
        matches = self._search(snapshot, vectors, k)
        answers, position = [], 0
        for inputs in per_photo:
            photo = []
            for item in inputs:
                nearest = matches[position]
                photo.append(FaceAnswer(
                    face=item.face, people=_predictions(snapshot, probabilities[position], top_k),
                    matches=nearest,
                    unknown=_is_unknown(threshold, nearest[0] if nearest else None)))
                position += 1
            answers.append(photo)
        return answers

    def find_faces(self, image: ImageInput) -> list[Face]:
        """Every face the store's face step finds in ``image``, largest first (no network).

        >>> faces = store.find_faces("group.jpg")             # two people side by side
        >>> len(faces), len(faces[0].landmarks)               # 5 landmarks each
        (2, 5)
        """
        return self.faces.find(load_image(image))

    def verify(self, image_a: ImageInput, image_b: ImageInput) -> Verification:
        """Same person or not, by the distance between the two face prints.

        >>> store.verify("a.jpg", "b.jpg")
        Verification(distance=..., threshold=..., same=...)
        """
        snapshot = self.snapshot()
        pair = [(describe(image), load_image(image)) for image in (image_a, image_b)]
        vectors = snapshot.model.embed(_largest_faces(snapshot, pair))
        # facerank.distance / facerank.compare on embed()'s vectors give the same answer.
        distance = face_distance(vectors[0], vectors[1])
        threshold = _threshold(snapshot)
        return Verification(distance=distance, threshold=threshold,
                            same=None if threshold is None else distance <= threshold)

    def search_vectors(self, vectors: np.ndarray, *, k: int = 5) -> list[list[Match]]:
        """``closest`` for embeddings already computed (by ``embed``).

        >>> vectors = store.embed(["a.jpg", "b.jpg"])
        >>> [len(matches) for matches in store.search_vectors(vectors, k=3)]
        [3, 3]
        """
        snapshot = self._queryable()
        return self._search(snapshot, np.atleast_2d(vectors), k)

    def is_unknown(self, match: Match | None) -> bool | None:
        """Whether a nearest match lies beyond ``unknown_threshold``, too far to name anyone
        (None: no threshold calibrated).

        >>> match = store.closest("GALLERY/s1/1.pgm", k=1)[0]   # a gallery image finds itself
        >>> print(store.unknown_threshold, store.is_unknown(match))     # not calibrated yet
        None None
        """
        return _is_unknown(self.unknown_threshold, match)

    def _search(self, snapshot: Snapshot, vectors: np.ndarray, k: int) -> list[list[Match]]:
        distances, ids = snapshot.search(vectors, k)
        with self.database.reading() as sql:
            records = Database.records_by_id(sql, ids[ids >= 0].tolist())
        answers = []
        for row_distances, row_ids in zip(distances, ids):
            matches = []
            for distance, record_id in zip(row_distances, row_ids):
                record = records.get(int(record_id))
                # A record deleted since this snapshot was taken: its file may be gone too, so
                # it is not offered (the next snapshot no longer holds it).
                if record_id < 0 or record is None:
                    continue
                matches.append(Match(rank=len(matches), person=record.person,
                                     distance=float(distance),
                                     path=layout.resolved_path(self.folder, record.path),
                                     id=record.id))
            answers.append(matches)
        return answers

    def _queryable(self, *, empty_ok: bool = False) -> Snapshot:
        # empty_ok: identify answers people from the classifier before the index is built
        # (its matches are then empty); closest has nothing to answer with.
        snapshot = self.snapshot()
        if snapshot.is_stale:
            raise StoreMismatchError(
                f"the index of {self.folder} was embedded by another model or preprocessing "
                f"(identity {snapshot.model_identity[:12]}, the store's model is "
                f"{snapshot.model.config.identity[:12]}); run `facerank index build GALLERY "
                f"--store {self.folder}` to re-embed it")
        if snapshot.count == 0 and not empty_ok:
            raise StoreError(f"the index of {self.folder} is empty: run `facerank index build "
                             f"GALLERY --store {self.folder}`")
        return snapshot

    def _resolved(self, record: Record) -> Record:
        path = layout.resolved_path(self.folder, record.path)
        return record if path == record.path else Record(
            record.id, path, record.person, record.sha256, record.size, record.mtime_ns)

    # -- writes ----------------------------------------------------------------------------------

    def add(self, paths: Iterable[str | Path] | str | Path, *, person: str | Sequence[str],
            show_progress: bool = False, commit_every: int = COMMIT_EVERY) -> ChangeReport:
        """Embed and index image files as ``person`` (one name, or one per path). ``paths`` is
        one file (a ``str`` or ``Path``) or an iterable of them.

        A path already indexed with the same content is left as it is; with new content it is
        re-embedded. Unreadable files are skipped and listed in the report.

        >>> report = store.add(["new/ada1.jpg", "new/ada2.jpg"], person=["ada", "bob"])
        >>> store.add("new/ada1.jpg", person="ada").unchanged     # one file: a str or a Path
        1
        """
        paths = _as_paths(paths)
        if isinstance(person, str):
            people = [person] * len(paths)
        elif isinstance(person, Iterable) and not isinstance(person, bytes):
            people = list(person)
        else:
            raise TypeError(f"person must be a name (str) or one name per path, got "
                            f"{type(person).__name__}")
        if len(people) != len(paths):
            raise UsageError(f"{len(people)} people for {len(paths)} paths")
        for name in set(people):
            check_person_name(name)
        with self._writer(show_progress, commit_every) as writer:
            writer.reembed_if_stale()
            writer.fit_index(writer.snapshot.count + len(paths))
            writer.ingest(list(zip(paths, people)))
            return writer.report.deduplicate()

    def remove(self, *images: int | str | Path | Iterable[int | str | Path],
               ids: Iterable[int] = (), paths: Iterable[str | Path] = (),
               person: str | None = None) -> ChangeReport:
        """Remove gallery images: each positional argument a record id (an ``int``), a path
        (a ``str`` or ``Path``) or a list of them; or by ``ids=``, by ``paths=``, or every image
        of ``person``. Photos the store owns (added through the server) are deleted with their
        last record.

        >>> _ = store.add(["new/ada1.jpg", "new/ada2.jpg"], person="ada")
        >>> added = store.closest("new/ada1.jpg", k=1)[0]
        >>> store.remove(added.id, "new/ada2.jpg").removed      # a record id and a path
        2
        >>> store.remove(person="ada").removed                  # nothing of ada's left
        0
        """
        wanted_ids, wanted = [], []
        for target in [*images, *_listed(ids), *_listed(paths)]:
            for item in (target if _is_many(target) else [target]):
                if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                    wanted_ids.append(int(item))
                elif isinstance(item, (str, os.PathLike)):
                    wanted.append(layout.stored_path(self.folder, item))
                else:
                    raise TypeError(f"remove takes record ids (int) and paths (str or Path), "
                                    f"got {type(item).__name__}: {item!r}")
        if person is not None and not isinstance(person, str):
            raise TypeError(f"person must be a name (str), got {type(person).__name__}")
        with self._writer(False, COMMIT_EVERY) as writer:
            with self.database.reading() as sql:
                doomed = set(wanted_ids)
                doomed |= {r.id for r in map(partial(Database.record_at, sql), wanted)
                           if r is not None}
                if person is not None:
                    doomed |= {r.id for r in Database.records(sql, "WHERE r.person = ?",
                                                              (person,))}
            writer.remove(sorted(doomed))
            return writer.report

    def sync_folder(self, gallery: str | Path, *, show_progress: bool = False,
                    memory: int | str | None = None,
                    commit_every: int | None = None, engine: Engine | None = None
                    ) -> ChangeReport:
        """Make the index match a gallery folder: embed new and changed files, drop deleted ones.

        Only records whose path lies under ``gallery`` are compared; images added from
        elsewhere are kept. Unchanged files (same size and modification time, or same content)
        are not embedded again, nor are files found again at a new path (a moved or renamed
        gallery): their records follow them.

        ``memory``: the index's memory budget (bytes, or ``"4G"``), kept for later writes; the
        index kind is chosen within it (``choose_index``), now, whatever the gallery's growth.
        Follow with ``tune_index`` to tune the built index's search parameters.

        ``engine`` runs the embedding and index building elsewhere: ``facerank.scale.RayEngine``
        on a Ray cluster, where ``gallery`` may also be any path Ray can read (``s3://...``).

        >>> report = store.sync_folder("GALLERY/")      # indexed already: nothing to embed
        >>> report.added, report.updated, report.removed, report.unchanged
        (0, 0, 0, 50)

        On a Ray cluster: ``store.sync_folder("s3://bucket/photos/", engine=RayEngine(workers=8))``.
        """
        if engine is None and is_uri(str(gallery)):
            raise UsageError(f"{gallery} is a URI: a local build reads folders only; pass "
                             "engine=facerank.scale.RayEngine(...) (`facerank index build URI "
                             "--ray auto`), or copy the gallery to a folder")
        engine = engine or LocalEngine()
        scanned = engine.scan(gallery)
        root = layout.absolute(scanned.root).rstrip("/") + "/"
        with self._writer(show_progress, commit_every, engine) as writer:
            writer.report.skipped.extend(scanned.problems)
            present = {layout.absolute(image.path): image for image in scanned.images}
            # Before a re-embed, which must read the records' files where they are now.
            writer.open_gallery(root, {path: image.person for path, image in present.items()})
            writer.reembed_if_stale()
            with self.database.reading() as sql:
                total = Database.count(sql)
                under = Database.records_under(sql, root)
            expected = len(present) + total - len(under)
            writer.fit_index(expected, memory_budget_bytes=self._memory_budget(writer, memory,
                                                                              expected))
            writer.ingest([(image.path, image.person) for image in present.values()])
            # After the ingest, which may have found some of them again at a new path.
            with self.database.reading() as sql:
                under = Database.records_under(sql, root)
            writer.remove([r.id for r in under if r.path not in present])
            if writer.snapshot.needs_compaction:  # e.g. left so by a build killed mid-way
                writer.compact()
            return writer.report.deduplicate()

    def set_calibration(self, calibration: dict) -> None:
        """Store the thresholds of a calibration (see ``facerank.quality.calibrate``) for the
        current model.

        >>> result = facerank.calibrate(store, save=False)      # calibrate(store) also stores it
        >>> store.set_calibration(result.to_json())
        >>> store.threshold == result.threshold
        True
        """
        with self._writer(False, COMMIT_EVERY) as writer:
            with self.database.writing() as sql:
                Database.set_meta(sql, calibration={
                    **calibration, "model_identity": writer.model.config.identity})
                Database.bump_version(sql)

    def compact(self) -> None:
        """Fold the changes since the last index file into a new one (done automatically once
        they grow; see ``facerank.store.snapshot``).

        >>> store.compact()
        >>> store.info()["pending_changes"]
        0
        """
        with self._writer(False, COMMIT_EVERY) as writer:
            writer.compact()

    def reindex(self, *, factory: str | None = None, memory: int | str | None = None,
                target_recall: float | None = None, target_latency_ms: float | str | None = None,
                engine: Engine | None = None) -> str:
        """Rebuild the index from the stored vectors (nothing is re-embedded): of ``factory``
        (a FAISS factory string), else of the kind ``choose_index`` picks for its size within
        ``memory`` (bytes or ``"4G"``; default the store's budget, else 2 GiB), then tune its
        search parameters (``tune_index``). Returns the factory. Queries keep the current index
        until the new one is switched in. ``engine``: where the index is built
        (``facerank.scale.RayEngine``: trained here, filled in shards on a Ray cluster).

        >>> store.reindex(factory="IVF1024,Flat")   # searched exactly until it can train
        'IVF1024,Flat'
        >>> store.reindex(memory="4G")               # what choose_index picks for 50 images
        'Flat'
        """
        if factory is not None and "HNSW" in factory:
            raise UsageError(f"{factory!r}: HNSW indexes cannot remove vectors, and a store "
                             "removes them; choose Flat, IVF...,Flat or IVF...,PQ...")
        if factory is not None and memory is not None:
            raise UsageError("give factory or memory, not both: memory chooses the factory")
        with self._writer(False, COMMIT_EVERY, engine) as writer:
            count = writer.snapshot.count
            budget = self._memory_budget(writer, memory, count)
            plan = (IndexPlan.for_factory(factory) if factory is not None
                    else choose_index(count, writer.snapshot.dim,
                                      **({"memory_budget_bytes": budget} if budget else {})))
            writer.rebuild(plan, chosen_for=count)
            self._tune(writer, target_recall, target_latency_ms)
            return plan.factory

    def tune_index(self, *, target_recall: float | None = None,
                   target_latency_ms: float | str | None = None, k: int = 10) -> Tuning:
        """Tune the index's search parameters (IVF lists visited, re-ranking depth) against
        exact search on 200 stored vectors: the cheapest setting with recall@k at least
        ``target_recall`` (default 0.95), or the most accurate within ``target_latency_ms``
        (``5``, ``"5ms"``). Kept in the store and applied whenever the index loads, until the
        index changes kind. An exact index has nothing to tune (recall 1.0).

        >>> tuning = store.tune_index(target_recall=0.95)
        >>> tuning.factory, tuning.parameters, tuning.recall    # exact: nothing to tune
        ('Flat', {}, 1.0)
        """
        with self._writer(False, COMMIT_EVERY) as writer:
            return self._tune(writer, target_recall, target_latency_ms, k=k)

    @staticmethod
    def _tune(writer: Writer, target_recall, target_latency_ms, *, k: int = 10) -> Tuning:
        if isinstance(target_latency_ms, str):
            target_latency_ms = parse_latency(target_latency_ms)
        base = writer.snapshot.base
        if base.is_exact or not len(base):
            # Exact (or still gathering vectors to train on): nothing to tune, nothing to keep.
            return Tuning(k=k, factory=base.factory, target_recall=target_recall,
                          target_latency_ms=target_latency_ms)
        return tune_base(writer, target_recall=target_recall,
                         target_latency_ms=target_latency_ms, k=k)

    def _memory_budget(self, writer: Writer, memory: int | str | None, count: int) -> int | None:
        """The index's memory budget in bytes: ``memory`` (checked against ``count`` vectors,
        then kept in the store), else the one kept, else None (choose_index's default)."""
        if memory is None:
            return writer.snapshot.meta.get("index_memory_budget")
        budget = parse_size(memory)
        try:
            choose_index(count, writer.snapshot.dim, memory_budget_bytes=budget)
        except ValueError as error:
            raise UsageError(f"memory {memory!r} is too small for this index: {error}") from None
        with self.database.writing() as sql:
            Database.set_meta(sql, index_memory_budget=budget)
            Database.bump_version(sql)
        return budget

    def export_parquet(self, path: str | Path) -> int:
        """Write every searchable record with its vector to a Parquet file (see
        ``facerank.store.export``), for another vector store to load; returns the rows.

        >>> store.export_parquet("exported/faces.parquet")       # rows written
        50
        """
        from facerank.store.export import export_parquet

        return export_parquet(self, path)

    @contextmanager
    def _writer(self, show_progress: bool, commit_every: int | None,
                engine: Engine | None = None) -> Iterator[Writer]:
        """Hold the store's lock, starting from what is on disk now, not from when we opened:
        another process may have committed since, and writing our older state would undo it."""
        with self._writing_here, FolderLock(self.folder, wait=self.lock_wait):
            snapshot = self.snapshot()
            model, faces = snapshot.model, snapshot.faces
            if read_config(self.folder).fingerprint != model.config.fingerprint:
                # Retrained: the new model re-embeds; queries keep the old one until it is done.
                model = load_model(self.folder, device=self._device, runtime=self._runtime)
                faces = face_finder(model.config, self.folder)
            yield Writer(self.folder, self.database, snapshot, model, faces, self._publish,
                         show_progress=show_progress, commit_every=commit_every, engine=engine)


def _tuning_summary(tuning: dict | None) -> dict | None:
    """What ``info`` shows of a tuning: its outcome, not the sweep."""
    if not tuning:
        return None
    return {key: value for key, value in tuning.items() if key != "sweep"}


def _calibration(snapshot: Snapshot) -> dict:
    """The stored calibration (see ``facerank.quality.calibrate``), or {} if none is valid."""
    calibration = snapshot.meta.get("calibration") or {}
    if calibration.get("model_identity") != snapshot.model.config.identity:
        return {}  # calibrated for another model: meaningless now
    return calibration


def _threshold(snapshot: Snapshot) -> float | None:
    return _calibration(snapshot).get("threshold")


def _unknown_threshold(snapshot: Snapshot) -> float | None:
    calibration = _calibration(snapshot)
    unknown = calibration.get("unknown_threshold")
    return calibration.get("threshold") if unknown is None else unknown


def _is_unknown(threshold: float | None, match: Match | None) -> bool | None:
    if threshold is None:
        return None
    return match is None or match.distance > threshold


def _predictions(snapshot: Snapshot, probabilities: np.ndarray, top_k: int) -> list[Prediction]:
    if top_k < 1:
        raise UsageError(f"top_k must be at least 1, got {top_k}")
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    people = snapshot.model.config.people
    return [Prediction(rank=rank, person=people[i], probability=float(probabilities[i]))
            for rank, i in enumerate(order)]


def _in_batches(images, batch_size: int, show_progress: bool, description: str, answer
                ) -> tuple[bool, list]:
    """(was it one image, ``answer``'s result for each batch), reading ``images`` (one image or
    many, see ``image_items``) ``batch_size`` at a time as ``(name, RGB image)`` pairs. Each
    batch is let go once answered: memory follows the batch, not the input's length."""
    _check_count("batch_size", batch_size)
    single, items = image_items(images)
    total = 1 if single else (len(images) if hasattr(images, "__len__") else None)
    results, batch = [], []
    with Progress(show_progress) as progress:
        task = progress.add(description, total)
        for position, source in enumerate(items):
            where = None if single else position
            batch.append((item_name(source, where), load_item(source, where)))
            if len(batch) == batch_size:
                results.append(answer(batch))
                for _ in batch:
                    progress.advance(task)
                batch = []
        if batch:
            results.append(answer(batch))
            for _ in batch:
                progress.advance(task)
    return single, results


def _one_or_all(single: bool, parts: list[list]) -> list:
    """The one image's answer, or every image's answer in order, from per-batch lists."""
    return parts[0][0] if single else [answer for part in parts for answer in part]


def _largest_faces(snapshot: Snapshot, batch: list) -> list:
    """The network's input for each ``(name, image)``: its largest face, aligned."""
    inputs = []
    for name, image in batch:
        found = snapshot.faces.inputs(image)
        if not found:
            raise NoFaceError(name)
        inputs.append(found[0].image)
    return inputs


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise UsageError(f"{name} must be a whole number of at least 1, got {value!r}")


def _as_paths(paths) -> list[Path]:
    """One file (``str``/``Path``: never its characters) or an iterable of them, as Paths."""
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    if not _is_many(paths):
        raise TypeError(f"add takes image files: a path (str or Path) or an iterable of paths, "
                        f"got {type(paths).__name__} (save an image to a file first)")
    found = []
    for position, path in enumerate(paths):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"paths[{position}]: expected a path (str or Path), got "
                            f"{type(path).__name__}")
        found.append(Path(path))
    return found


def _is_many(value) -> bool:
    """An iterable of targets, as opposed to one (a str, bytes and a PIL image are one)."""
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, os.PathLike,
                                                                  Image.Image))


def _listed(values) -> list:
    """``ids=``/``paths=``: one value, or an iterable of them."""
    return [values] if not _is_many(values) else list(values)


def check_person_name(name: str) -> None:
    """Refuse (``UsageError``) a person's name that is blank, holds ``/`` or ``\\``, or starts
    with ``.``: a name becomes a folder where the server saves a person's uploads, so nothing
    that could climb out of one or hide in it."""
    if (not isinstance(name, str) or not name.strip() or "/" in name or "\\" in name
            or name.startswith(".")):
        raise UsageError(f"invalid person name {name!r}: it may not be blank, contain / or \\, "
                         "or start with .")

