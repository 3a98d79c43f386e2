"""Writing a store: embed files into records, remove them, re-embed after a retrain, rebuild the
index for another kind, compact.

Every step commits to the database in small transactions (one embedding batch each) and then
publishes the next snapshot, so a crash loses at most the batch in flight and queries see each
batch whole. Work that replaces the whole index (a re-embed, another index kind, a compaction)
is built beside the current state and switched to in one transaction; until then the current
state answers, and a crash leaves it as it was, with the pending work resumed by the next
writer (the vectors of a re-embed are committed as they come).
"""

from __future__ import annotations

import hashlib
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from facerank.errors import ImageError, StoreError
from facerank.faces.detection import FaceFinder
from facerank.data.gallery import Gallery, scan_gallery
from facerank.data.images import load_image
from facerank.search.index import DEFAULT_FACTORY, FaceIndex, IndexPlan, choose_index
from facerank.progress import Progress
from facerank.data.sources import as_source, is_uri, read_source
from facerank.store import layout
from facerank.store.database import Database
from facerank.store.results import ChangeReport, Record
from facerank.store.snapshot import Delta, Snapshot, read_snapshot
from facerank.store.tuning import load_base

#: Images per transaction while embedding: one batch of the network. A crash loses at most this
#: many; each commit costs an fsync or two (~ms), small beside embedding 32 faces.
COMMIT_EVERY = 32
#: Vectors read from the database at a time while an index is built from it.
READ_CHUNK = 8192
NO_FACE = "no face found"


class Writer:
    """One write to a store, holding its lock: the steps below, in the order a write needs them.

    ``snapshot`` is the state this write has reached (published after each commit);
    ``model``/``faces`` are the store's current model, which differs from the snapshot's until a
    re-embed switches to it.
    """

    def __init__(self, folder: Path, database: Database, snapshot: Snapshot, model, faces,
                 publish: Callable[[Snapshot], None], *, show_progress: bool = False,
                 commit_every: int | None = None, report: ChangeReport | None = None,
                 engine: "Engine | None" = None):
        self.folder, self.database = folder, database
        self.snapshot, self.model, self.faces = snapshot, model, faces
        self._publish = publish
        self.show_progress = show_progress
        self.engine = engine or LocalEngine()
        # At most the engine's batch: a local batch is also one batch of the network.
        self.batch = max(1, min(commit_every or self.engine.commit_every,
                                self.engine.commit_every))
        self.report = report or ChangeReport()
        self.followed: set[int] = set()  # records whose gallery folder moved in this write

    def publish(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._publish(snapshot)

    # -- galleries -------------------------------------------------------------------------------

    def open_gallery(self, root: str, present: dict[str, str]) -> None:
        """Records of files under the folder ``root`` keep paths relative to it from now on.

        A known gallery whose folder is gone, with more than half of its files here under the
        same relative paths and people, and a sample of them with the same content, has moved
        here: its root changes in one row and the records of those files follow without their
        files being read again. Its other records keep their old paths, outside any gallery
        (a later sync of wherever they went finds them by content). ``present``: path ->
        person of the files found under ``root``.
        """
        with self.database.writing() as sql:
            galleries = Database.galleries(sql)
            if not any(root.startswith(known) or known.startswith(root)
                       for known in galleries.values()):
                here = {path[len(root):]: person for path, person in present.items()}
                moved_from, following = None, set()
                for gallery, known in galleries.items():
                    if is_uri(known) or self.engine.exists(known):
                        continue  # still there: another gallery, not this one moved
                    records = Database.gallery_records(sql, gallery)
                    found = [(i, path, sha256) for i, path, person, sha256 in records
                             if here.get(path) == person]
                    if len(found) * 2 > len(records) and len(found) > len(following) and \
                            self._same_content(root, found):
                        moved_from, following = gallery, {i for i, _, _ in found}
                if moved_from is not None:
                    Database.move_gallery(sql, moved_from, root, following)
                    self.followed = following
            Database.open_gallery(sql, root)

    def _same_content(self, root: str, found: list[tuple[int, str, str]], sample: int = 8
                      ) -> bool:
        """Whether a seeded sample of ``found`` (id, relative path, sha256) files under
        ``root`` hold what their records say: an unmounted gallery and another with the same
        names are told apart by content, not by names and sizes."""
        for _, path, sha256 in random.Random(len(found)).sample(found, min(sample, len(found))):
            try:
                data = read_source(root + path)[0]
            except OSError:
                return False
            if hashlib.sha256(data).hexdigest() != sha256:
                return False
        return True

    # -- adding files ----------------------------------------------------------------------------

    def ingest(self, items: list[tuple[Path, str]]) -> None:
        """Embed ``(path, person)`` files not indexed yet or changed since; skip the rest."""
        # One record per file: a path given twice is one file (the last person given wins).
        items = list({layout.stored_path(self.folder, path): (path, person)
                      for path, person in items}.values())
        with self.database.reading() as sql:
            by_path = {}
            for path, _ in items:
                stored = layout.stored_path(self.folder, path)
                found = Database.record_at(sql, stored)
                if found is not None:
                    by_path[stored] = found
        pending: list[PendingFile] = []
        for path, person in items:
            old = by_path.get(layout.stored_path(self.folder, path))
            if old is not None and old.person == person:
                try:
                    info = self.engine.stat(path)
                except OSError:
                    info = None
                if info and info.st_size == old.size and info.st_mtime_ns == old.mtime_ns:
                    if old.id in self.followed:
                        self.report.moved += 1  # its gallery moved here (open_gallery)
                    else:
                        self.report.unchanged += 1
                    continue
            pending.append(PendingFile(as_source(path), person, old))
        if not self.snapshot.base.is_built or len(self.snapshot.base) == 0:
            # An approximate index trains on the first vectors it is given; galleries come
            # person by person, so a seeded shuffle makes that sample cover everyone.
            random.Random(len(pending)).shuffle(pending)
        self._embed(pending, self._commit_new, find_moved=True)

    def _embed(self, items: list["PendingFile"], commit: Callable, *, find_moved: bool = False) -> None:
        self.engine.embed(self, items, commit, find_moved=find_moved)

    def _commit_new(self, outcomes: list["FileOutcome"], vectors: np.ndarray | None) -> None:
        embedded = [o for o in outcomes if o.embedded]
        touched = [o for o in outcomes if o.unchanged]
        moved = [o for o in outcomes if o.moved is not None]
        replaced = [o.old.id for o in embedded if o.old is not None]
        generation = self.snapshot.generation
        with self.database.writing() as sql:
            Database.delete_records(sql, replaced)
            new_ids = [Database.insert_record(sql, Record(
                0, layout.stored_path(self.folder, o.path), o.person, o.sha256, o.size,
                o.mtime_ns)) for o in embedded]
            if new_ids:
                Database.insert_vectors(sql, generation, new_ids, vectors)
                Database.log_added(sql, new_ids)
            for outcome in touched:
                Database.update_file(sql, outcome.old.id, size=outcome.size,
                                     mtime_ns=outcome.mtime_ns)
            for outcome in moved:
                Database.update_file(sql, outcome.moved.id,
                                     path=layout.stored_path(self.folder, outcome.path),
                                     size=outcome.size, mtime_ns=outcome.mtime_ns)
            version = Database.bump_version(sql) if new_ids or replaced else None
            seq = Database.last_change(sql)
        self.report.updated += len(replaced)
        self.report.added += len(new_ids) - len(replaced)
        self.report.unchanged += len(touched)
        self.report.moved += len(moved)
        if version is not None:
            self.publish(self.snapshot.changed(
                added=(np.array(new_ids, np.int64), vectors), removed=replaced, seq=seq,
                version=version))
        if self.snapshot.needs_compaction:
            self.compact()

    # -- removing --------------------------------------------------------------------------------

    def remove(self, ids: list[int]) -> list[Record]:
        """Delete records (and the uploads the store owns that no record uses any more)."""
        if not ids:
            return []
        generation = self.snapshot.generation
        with self.database.writing() as sql:
            doomed = list(Database.records_by_id(sql, ids).values())
            searchable = Database.having_vector(sql, generation, [r.id for r in doomed])
            Database.delete_records(sql, [r.id for r in doomed])
            version = Database.bump_version(sql)
            seq = Database.last_change(sql)
            owned = sorted({r.path for r in doomed if layout.is_owned(r.path)})
            still_used = Database.paths_in_use(sql, owned)
        self.publish(self.snapshot.changed(removed=searchable, seq=seq, version=version,
                                           records_removed=len(doomed)))
        for stored in set(owned) - still_used:
            Path(layout.resolved_path(self.folder, stored)).unlink(missing_ok=True)
        self.report.removed += len(doomed)
        if self.snapshot.needs_compaction:
            self.compact()
        return doomed

    # -- re-embedding after a retrain ------------------------------------------------------------

    def reembed_if_stale(self) -> None:
        """Give every record a vector from the current model, in a new generation built beside
        the old one; switch to it once every readable record has one. Resumes an interrupted
        re-embed, and retries records whose file could not be read last time."""
        config = self.model.config
        snapshot = self.snapshot
        if snapshot.model_identity == config.identity and snapshot.dim == config.embedding_dim:
            if snapshot.records > snapshot.count:
                self._embed_missing(snapshot.generation)
            return
        with self.database.writing() as sql:
            generation = Database.building_generation(sql, config.identity)
            if generation is None:
                generation = Database.new_generation(sql, config.identity, config.embedding_dim,
                                                     "building")
            todo = Database.records_without_vector(sql, generation)
        items = [PendingFile(as_source(layout.resolved_path(self.folder, r.path)), r.person, r,
                             reembed=True) for r in todo]
        random.Random(0).shuffle(items)  # the new index trains on a sample that covers everyone

        def commit_vectors(outcomes: list[FileOutcome], vectors: np.ndarray | None) -> None:
            embedded = [o for o in outcomes if o.embedded]
            with self.database.writing() as sql:
                if embedded:
                    Database.insert_vectors(sql, generation, [o.old.id for o in embedded], vectors)
                self._note_new_content(sql, embedded)
            self.report.reembedded += len(embedded)

        self._embed(items, commit_vectors)
        self._switch_generation(generation)

    def _embed_missing(self, generation: int) -> None:
        """Records of the current generation without a vector (their file could not be read
        at the last re-embed): embedded now if they can be, kept and reported otherwise."""
        with self.database.reading() as sql:
            todo = Database.records_without_vector(sql, generation)
        items = [PendingFile(as_source(layout.resolved_path(self.folder, r.path)), r.person, r,
                             reembed=True) for r in todo]

        def commit_vectors(outcomes: list[FileOutcome], vectors: np.ndarray | None) -> None:
            embedded = [o for o in outcomes if o.embedded]
            if not embedded:
                return
            ids = [o.old.id for o in embedded]
            with self.database.writing() as sql:
                Database.insert_vectors(sql, generation, ids, vectors)
                Database.log_added(sql, ids)
                self._note_new_content(sql, embedded)
                version = Database.bump_version(sql)
                seq = Database.last_change(sql)
            self.report.reembedded += len(embedded)
            self.publish(self.snapshot.changed(added=(np.array(ids, np.int64), vectors), seq=seq,
                                               version=version, new_records=0))

        self._embed(items, commit_vectors)

    @staticmethod
    def _note_new_content(sql, embedded: list["FileOutcome"]) -> None:
        for outcome in embedded:
            if outcome.sha256 != outcome.old.sha256:
                Database.update_file(sql, outcome.old.id, sha256=outcome.sha256,
                                     size=outcome.size, mtime_ns=outcome.mtime_ns)

    def _switch_generation(self, generation: int) -> None:
        # Records whose file cannot be read now are not lost: they stay, without a vector (not
        # searchable), listed in the report's ``skipped``, and every later write tries again.
        watermark = self.snapshot.seq
        with self.database.reading() as sql:
            count = len(Database.vector_ids(sql, generation))
            records = Database.count(sql)
        if records and count < records / 2:
            # Most files unreadable is a gallery out of reach (an unmounted disk, a bucket this
            # machine cannot read), not a gallery gone: keep the old index answering.
            first = (f" (first: {self.report.skipped[0][0]}: {self.report.skipped[0][1]})"
                     if self.report.skipped else "")
            raise StoreError(
                f"only {count} of {records} records could be re-embedded with the new model"
                f"{first}; the old index keeps answering. Make the photos readable here (or "
                "build on a cluster that reads them, --ray) and run `facerank index build` again")
        plan = choose_index(count, self.model.config.embedding_dim)
        index_file = self.engine.build_index_file(self.folder, self.database, generation, plan,
                                                  watermark)
        with self.database.writing() as sql:
            old = int(Database.meta(sql, "generation"))
            sql.execute("UPDATE generations SET status = 'retired' WHERE id = ?", (old,))
            sql.execute("UPDATE generations SET status = 'current' WHERE id = ?", (generation,))
            sql.execute("DELETE FROM vectors WHERE generation = ?", (old,))
            switch_index(sql, self.folder, index_file, watermark, plan.factory,
                         generation=generation, index_chosen_for=count)
            version = Database.bump_version(sql)
        self.publish(Snapshot(
            model=self.model, faces=self.faces, generation=generation,
            model_identity=self.model.config.identity, dim=self.model.config.embedding_dim,
            base=self._loaded(index_file, plan.factory), base_file=index_file,
            watermark=watermark, seq=watermark, version=version, count=count, records=records,
            meta=self._meta()))

    # -- the index kind, and compaction ----------------------------------------------------------

    def fit_index(self, expected: int, *, memory_budget_bytes: int | None = None) -> None:
        """Give the index the kind ``choose_index`` picks for ``expected`` images.

        An empty store simply starts with it. A filled one changes kind only once it has doubled
        or halved since its index was chosen, so that a gallery hovering near a threshold does
        not rebuild at every sync; a ``memory_budget_bytes`` given now changes it at once. The
        vectors come from the database: nothing is re-embedded.
        """
        budget = memory_budget_bytes or self.snapshot.meta.get("index_memory_budget")
        plan = choose_index(expected, self.model.config.embedding_dim,
                            **({"memory_budget_bytes": int(budget)} if budget else {}))
        meta = self.snapshot.meta
        if plan.factory == meta.get("index_factory", DEFAULT_FACTORY):
            return
        count = self.snapshot.count
        chosen_for = int(meta.get("index_chosen_for") or count or 1)
        if count and chosen_for / 2 < expected < chosen_for * 2 and memory_budget_bytes is None:
            return
        self.rebuild(plan, chosen_for=expected)

    def rebuild(self, plan: IndexPlan, *, chosen_for: int | None = None) -> None:
        """A new base index of ``plan``'s kind holding every vector, switched to atomically."""
        snapshot = self.snapshot
        with self.database.reading() as sql:  # we hold the lock: nothing commits meanwhile
            watermark = Database.last_change(sql)
        index_file = self.engine.build_index_file(self.folder, self.database,
                                                  snapshot.generation, plan, watermark)
        with self.database.writing() as sql:
            switch_index(sql, self.folder, index_file, watermark, plan.factory,
                         index_chosen_for=chosen_for or snapshot.count)
            Database.bump_version(sql)
        self.publish(read_snapshot(self.folder, self.database, snapshot.model, snapshot.faces))

    def compact(self) -> None:
        """Fold the delta and the removals into a new base file (the only full index write
        besides a rebuild); queries keep the old base until the switch."""
        snapshot = self.snapshot
        base = snapshot.base.copy()
        gone = np.array(sorted(snapshot.removed), np.int64)
        if len(gone):
            base.remove(gone)
        ids, vectors = snapshot.delta.arrays(snapshot.dim)
        keep = ~np.isin(ids, gone)
        base.add(ids[keep], vectors[keep])
        index_file = layout.index_file_name(snapshot.generation, snapshot.seq)
        base.save(self.folder / index_file)
        with self.database.writing() as sql:
            switch_index(sql, self.folder, index_file, snapshot.seq,
                         Database.meta(sql, "index_factory", DEFAULT_FACTORY))
            version = Database.bump_version(sql)
        self.publish(replace(snapshot, base=base, base_file=index_file, watermark=snapshot.seq,
                             delta=Delta(), removed=frozenset(), version=version,
                             meta=self._meta()))

    def _loaded(self, index_file: str, factory: str) -> FaceIndex:
        return load_base(self.folder / index_file, self._meta(), factory=factory)

    def _meta(self) -> dict:
        with self.database.reading() as sql:
            return Database.all_meta(sql)

    # -- what every engine's embedding goes through -----------------------------------------------

    def moved_files(self) -> "_MovedFiles":
        return _MovedFiles(self.folder, self.database, self.engine.exists)

    def _claim(self, outcome: "FileOutcome", moved: "_MovedFiles | None") -> "FileOutcome":
        """A file found to be a moved record is that record, unless another file of the same
        content claimed it first: then it is read and embedded as a new one."""
        if outcome.moved is None:
            return outcome
        if moved.claim(outcome.moved.id):
            return outcome
        return _read_file(replace(outcome.item, moved_ok=False), self.faces, None)

    def note(self, outcome: "FileOutcome") -> None:
        """Count a file's outcome in the report: no face, several faces, skipped and why."""
        report = self.report
        if self.faces.step.enabled and outcome.faces_found == 0 and (
                outcome.embedded or outcome.skipped == NO_FACE):
            report.no_face.append(str(outcome.path))
        elif outcome.faces_found > 1:
            report.several_faces.append(str(outcome.path))
        if outcome.skipped is not None:
            report.skipped.append((str(outcome.path), outcome.skipped))


class Engine(Protocol):
    """Where a write's embedding and index building run (see ``LocalEngine``)."""

    commit_every: int   # most images per transaction

    def embed(self, writer: Writer, items: list["PendingFile"], commit: Callable, *,
              find_moved: bool = False) -> None: ...

    def scan(self, gallery: str | Path) -> Gallery: ...

    def stat(self, path: str | Path) -> os.stat_result: ...   # size and modification time

    def exists(self, path: str) -> bool: ...

    def build_index_file(self, folder: Path, database: Database, generation: int,
                         plan: IndexPlan, watermark: int) -> str: ...


class LocalEngine:
    """Embeds and builds indexes in this process: the default engine of every write.

    An engine has ``embed`` (read, find faces and embed items, calling ``commit`` per batch) and
    ``build_index_file`` (``build_index_file``'s signature); ``facerank.scale`` has one that runs
    on a Ray cluster.
    """

    commit_every = COMMIT_EVERY
    scan = staticmethod(scan_gallery)

    @staticmethod
    def stat(path: str | Path) -> os.stat_result:
        if is_uri(path):  # no cheap stat: the content decides (read and hashed again)
            raise OSError(f"{path}: not a local file")
        return os.stat(path)

    @staticmethod
    def exists(path: str) -> bool:
        # A URI cannot be checked here cheaply: taken to exist, so no moved file claims it.
        return True if is_uri(path) else os.path.exists(path)

    def embed(self, writer: Writer, items: list["PendingFile"], commit: Callable, *,
              find_moved: bool = False) -> None:
        """Read, find faces and embed ``items`` batch by batch, committing each batch."""
        chunks = [items[start:start + writer.batch]
                  for start in range(0, len(items), writer.batch)]
        progress = Progress(writer.show_progress and len(items) > 0)
        moved = writer.moved_files() if find_moved else None
        # Reader threads stat, hash, decode and find the faces of the next batch while this one
        # is embedded: the network, the decoders and dlib release the GIL, so they overlap.
        readers = 2 if writer.faces.step.enabled else 1
        with progress, ThreadPoolExecutor(max_workers=readers) as pool:
            task = progress.add("embedding", len(items))

            def read_ahead(chunk):
                return [pool.submit(_read_file, item, writer.faces, moved) for item in chunk]

            upcoming = read_ahead(chunks[0]) if chunks else None
            for number, chunk in enumerate(chunks):
                outcomes = [future.result() for future in upcoming]
                if number + 1 < len(chunks):
                    upcoming = read_ahead(chunks[number + 1])
                outcomes = [writer._claim(outcome, moved) for outcome in outcomes]
                for outcome in outcomes:
                    writer.note(outcome)
                images = [o.image for o in outcomes if o.image is not None]
                vectors = writer.model.embed(images, batch_size=writer.batch) if images else None
                commit(outcomes, vectors)
                for _ in chunk:
                    progress.advance(task)

    @staticmethod
    def build_index_file(folder: Path, database: Database, generation: int, plan: IndexPlan,
                         watermark: int) -> str:
        return build_index_file(folder, database, generation, plan, watermark)


def build_index_file(folder: Path, database: Database, generation: int, plan: IndexPlan,
                     watermark: int) -> str:
    """Write an index of ``plan``'s kind from a generation's vectors in the database, streamed
    in chunks (a seeded sample trains it first); returns the new file's name."""
    with database.reading() as sql:
        ids = Database.vector_ids(sql, generation)
        dim = int(Database.generation(sql, generation)[1])
    index = FaceIndex(dim, plan=plan)
    if plan.train_size and len(ids) >= plan.train_size:
        sample = np.random.default_rng(0).choice(ids, plan.train_size, replace=False)
        with database.reading() as sql:
            index.train(Database.vectors(sql, generation, sample, dim)[1])
    for start in range(0, len(ids), READ_CHUNK):
        with database.reading() as sql:
            index.add(*Database.vectors(sql, generation, ids[start:start + READ_CHUNK], dim))
    index_file = layout.index_file_name(generation, watermark)
    index.save(folder / index_file)
    return index_file


def switch_index(sql, folder: Path, index_file: str, watermark: int, factory: str,
                 **more) -> None:
    """Point the store at a new index file, inside the caller's write transaction (and under
    the folder's lock). The change log it covers goes; so do index files other than the new
    one and the previous one (kept for readers about to load it), such as those of a writer
    killed before its switch."""
    old = Database.meta(sql, "index_file")
    if Database.meta(sql, "index_factory") != factory:  # tuned for another kind: meaningless
        more = {"index_search_parameters": None, "index_tuning": None, **more}
    Database.set_meta(sql, index_file=index_file, index_watermark=watermark,
                      previous_index_file=old, index_factory=factory, **more)
    sql.execute("DELETE FROM changes WHERE seq <= ?", (watermark,))
    for path in folder.glob(layout.INDEX_FILES):
        if path.name not in (index_file, old):
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class PendingFile:
    """A file a write is to read: where, whose, and the record it may replace."""

    path: Path | str             # a local path, or a URI (facerank.data.sources)
    person: str
    old: Record | None           # the record at this path, if any
    reembed: bool = False        # embed whatever the file holds now, under the old record's id
    moved_ok: bool = True        # may be matched to a record whose file moved


@dataclass
class FileOutcome:
    """What reading one file gave: an image to embed, an unchanged or moved file, or a skip."""

    item: PendingFile
    image: object = None           # a PIL image to embed: the aligned face, or the whole image
    faces_found: int = 0
    sha256: str = ""
    size: int = 0
    mtime_ns: int = 0
    skipped: str | None = None     # why the file was skipped
    unchanged: bool = False        # same content as its record: only its stat is new
    moved: Record | None = None    # the record of the same content whose file is gone
    vector: np.ndarray | None = None  # its embedding, where an engine embedded it elsewhere

    @property
    def embedded(self) -> bool:
        return self.image is not None or self.vector is not None

    @property
    def path(self) -> Path:
        return self.item.path

    @property
    def person(self) -> str:
        return self.item.person

    @property
    def old(self) -> Record | None:
        return self.item.old


class _MovedFiles:
    """Records whose file is gone, found again by content: a moved or renamed gallery re-syncs
    to the same records, without embedding anything again."""

    def __init__(self, folder: Path, database: Database, exists: Callable[[str], bool]):
        self.folder, self.database, self.exists = folder, database, exists
        self._claimed: set[int] = set()

    def find(self, sha256: str, person: str) -> Record | None:
        with self.database.reading() as sql:
            candidates = Database.records(sql, "WHERE r.sha256 = ? AND r.person = ?",
                                          (sha256, person))
        for record in candidates:
            if record.id not in self._claimed and not self.exists(
                    layout.resolved_path(self.folder, record.path)):
                return record
        return None

    def claim(self, record_id: int) -> bool:
        if record_id in self._claimed:
            return False
        self._claimed.add(record_id)
        return True


def _read_file(item: PendingFile, faces: FaceFinder, moved: _MovedFiles | None) -> FileOutcome:
    """Stat, hash, decode a file and find its face; nothing of the store is changed (this runs
    on a reader thread)."""
    outcome = FileOutcome(item)
    try:
        data, outcome.size, outcome.mtime_ns = read_source(item.path)
        outcome.sha256 = hashlib.sha256(data).hexdigest()
        if settle_known_content(outcome, moved):
            return outcome
        image = load_image(data)
        found = faces.find(image, key=outcome.sha256, every=False)  # its largest face counts
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


def settle_known_content(outcome: FileOutcome, moved: _MovedFiles | None) -> bool:
    """True when the file's content (its sha256, just read) needs no embedding: the same as its
    record's (only its stat is new), or a record's whose file is gone (that record moved here).
    Every engine decides so, after hashing and before embedding."""
    item, old = outcome.item, outcome.item.old
    if not item.reembed and old is not None and old.sha256 == outcome.sha256 \
            and old.person == item.person:
        outcome.unchanged = True
        return True
    if old is None and item.moved_ok and moved is not None:
        outcome.moved = moved.find(outcome.sha256, item.person)
        return outcome.moved is not None
    return False
