"""A snapshot: everything a query reads, never changed once published.

A query takes the store's current snapshot once and answers from it alone, so a writer working
meanwhile can never show it half a change. A snapshot is

- the model and its face step (a retrain is seen only once its gallery is re-embedded),
- the **base** index: the FAISS file, loaded as it was written at the last compaction,
- the **delta**: exact blocks of the vectors added since (from the database's change log),
- **removed**: ids deleted since, hidden from both.

A writer makes the next snapshot from the previous one: new blocks are appended (the old blocks
are shared, not copied), so one added photo costs O(1) however large the store; compaction folds
the delta and the removals into a new base file once they grow (``needs_compaction``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np

from facerank.errors import StoreError, UsageError
from facerank.search.index import DEFAULT_FACTORY, FaceIndex
from facerank.store.database import Database
from facerank.store.tuning import load_base

#: The delta is searched exactly: compaction folds it into the base once it holds more than
#: max(DELTA_MIN, base / 8) vectors, and never lets it pass DELTA_MAX (2**15 x 2048 floats: an
#: exact scan of ~30 ms on this project's 2-core reference machine, index_scale.md).
DELTA_MIN, DELTA_MAX = 4096, 2**15
#: Removed ids make every search fetch that many more candidates: fold them in past this.
REMOVED_MAX = 1024


@dataclass(frozen=True)
class Delta:
    """Vectors added since the base was written, as immutable (ids, vectors) blocks.

    Appending makes a new Delta that shares the old blocks; the last blocks are merged while
    they are at least half the size of the one before, so there are O(log n) blocks and each
    vector is copied O(log n) times in all.
    """

    blocks: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

    def __len__(self) -> int:
        return sum(len(ids) for ids, _ in self.blocks)

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> "Delta":
        if len(ids) == 0:
            return self
        blocks = list(self.blocks) + [(np.asarray(ids, np.int64).copy(),
                                       np.ascontiguousarray(vectors, np.float32).copy())]
        while len(blocks) > 1 and len(blocks[-1][0]) * 2 >= len(blocks[-2][0]):
            (ids_a, vectors_a), (ids_b, vectors_b) = blocks[-2], blocks[-1]
            blocks[-2:] = [(np.concatenate([ids_a, ids_b]), np.concatenate([vectors_a, vectors_b]))]
        for ids_block, vectors_block in blocks:
            ids_block.setflags(write=False)
            vectors_block.setflags(write=False)
        return Delta(tuple(blocks))

    def arrays(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.blocks:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        return (np.concatenate([ids for ids, _ in self.blocks]),
                np.concatenate([vectors for _, vectors in self.blocks]))


@dataclass(frozen=True)
class Snapshot:
    """One consistent state of a store (see the module's docstring)."""

    model: object                 # a FaceModel or OnnxFaceModel (facerank.model.runtime)
    faces: object                 # its FaceFinder
    generation: int               # the generation whose vectors these are
    model_identity: str           # the identity of the model that embedded them
    dim: int
    base: FaceIndex
    base_file: str | None
    watermark: int                # the last change the base holds
    seq: int                      # the last change this snapshot holds
    version: int                  # the database's version this snapshot matches
    count: int                    # searchable vectors
    records: int = 0              # records (more than ``count`` only before a re-embed)
    meta: dict = field(default_factory=dict)
    delta: Delta = Delta()
    removed: frozenset = frozenset()

    @property
    def is_stale(self) -> bool:
        """True when the vectors were embedded by another model than the snapshot's."""
        return self.records > 0 and (self.model_identity != self.model.config.identity
                                   or self.dim != self.model.config.embedding_dim)

    @property
    def needs_compaction(self) -> bool:
        limit = min(max(DELTA_MIN, len(self.base) // 8), DELTA_MAX)
        return len(self.delta) > limit or len(self.removed) > REMOVED_MAX

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest (Euclidean distances, ids) per query over base and delta, removed
        ids left out; -1 ids (and inf distances) where fewer exist."""
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        queries = np.ascontiguousarray(np.atleast_2d(vectors), np.float32)
        wanted = k + len(self.removed)  # removed ids may take some of the places
        parts_d, parts_i = [], []
        if len(self.base):
            distances, ids = self.base.search(queries, min(wanted, len(self.base)))
            parts_d.append(distances)
            parts_i.append(ids)
        for block_ids, block_vectors in self.delta.blocks:
            squared, positions = faiss.knn(queries, block_vectors, min(wanted, len(block_ids)))
            parts_d.append(np.sqrt(np.maximum(squared, 0.0)))
            parts_i.append(np.where(positions >= 0, block_ids[np.maximum(positions, 0)], -1))
        out_d = np.full((len(queries), k), np.inf, np.float32)
        out_i = np.full((len(queries), k), -1, np.int64)
        if not parts_d:
            return out_d, out_i
        distances, ids = np.hstack(parts_d), np.hstack(parts_i)
        removed = np.array(sorted(self.removed), np.int64)
        for row in range(len(queries)):
            keep = (ids[row] >= 0) & ~np.isin(ids[row], removed)
            row_d, row_i = distances[row][keep], ids[row][keep]
            order = np.lexsort((row_i, row_d))[:k]  # by distance, ties by id: deterministic
            out_d[row, :len(order)], out_i[row, :len(order)] = row_d[order], row_i[order]
        return out_d, out_i

    def changed(self, *, added: tuple[np.ndarray, np.ndarray] | None = None,
                removed: np.ndarray | list = (), seq: int, version: int,
                new_records: int | None = None, records_removed: int | None = None
                ) -> "Snapshot":
        """The next snapshot: ``added`` (ids, vectors) appended, ``removed`` ids hidden.

        ``removed`` are ids that had a vector here; ``records_removed`` counts the records that
        went (more, when some had none yet); ``new_records``: how many of ``added`` are new
        records (fewer, when a vector was embedded for a record that had none).
        """
        delta, count = self.delta, self.count
        added_count = 0 if added is None else len(added[0])
        if added_count:
            delta, count = delta.append(*added), count + added_count
        gone = frozenset(int(i) for i in removed)
        records = (self.records + (added_count if new_records is None else new_records)
                   - (len(gone) if records_removed is None else records_removed))
        return replace(self, delta=delta, removed=self.removed | gone, seq=seq, version=version,
                       count=count - len(gone), records=records)


def read_snapshot(folder: Path, database: Database, model, faces, *,
                  previous: Snapshot | None = None) -> Snapshot:
    """The store's committed state as a snapshot, starting from ``previous`` where it can (same
    base file: only the changes since are read)."""
    for attempt in range(5):
        try:
            return _read(folder, database, model, faces, previous)
        except FileNotFoundError:
            # The index file named a moment ago was compacted away since (a writer keeps the
            # previous one for such readers, but two compactions may pass): read again.
            time.sleep(0.05 * (attempt + 1))
            previous = None
    raise StoreError(f"{folder}: the index file named in the store's database is missing; "
                     f"rebuild with `facerank index build GALLERY --store {folder}`")


def _read(folder: Path, database: Database, model, faces, previous: Snapshot | None) -> Snapshot:
    with database.reading() as sql:
        meta = Database.all_meta(sql)
        generation = int(meta["generation"])
        identity, dim, _ = Database.generation(sql, generation)
        base_file = meta.get("index_file")
        watermark = int(meta.get("index_watermark", 0))
        factory = meta.get("index_factory", DEFAULT_FACTORY)
        reuse = (previous is not None and previous.base_file == base_file
                 and previous.generation == generation and base_file is not None)
        since = previous.seq if reuse else watermark
        changes = Database.changes_after(sql, since)
        count = int(sql.execute("SELECT count(*) FROM vectors WHERE generation = ?",
                                (generation,)).fetchone()[0])
        records = Database.count(sql)
        added = [record for _, record, is_added in changes if is_added]
        removed_now = {record for _, record, is_added in changes if not is_added}
        added_ids, added_vectors = Database.vectors(sql, generation, added, dim)
        version = int(meta.get("version", 0))
        seq = max([watermark, since] + [row[0] for row in changes])
        if reuse:
            base = previous.base
        elif base_file:
            path = folder / base_file
            if not path.exists():
                raise FileNotFoundError(path)
            try:
                base = load_base(path, meta, factory=factory)
            except (RuntimeError, ValueError) as error:
                raise StoreError(f"{path} cannot be read ({error}); rebuild with `facerank "
                                 f"index build GALLERY --store {folder}`") from None
        else:
            base = FaceIndex(dim, factory=factory)
    start = previous if reuse else Snapshot(
        model=model, faces=faces, generation=generation, model_identity=identity, dim=dim,
        base=base, base_file=base_file, watermark=watermark, seq=watermark, version=version,
        count=0, meta=meta)
    # Ids added and removed since are never in the base: they are simply not added. Ids are
    # never reused, so the order of the two does not matter.
    keep = ~np.isin(added_ids, np.array(sorted(removed_now), np.int64))
    snapshot = replace(start, model=model, faces=faces, meta=meta, delta=start.delta.append(
        added_ids[keep], added_vectors[keep]), removed=start.removed | (
        frozenset(removed_now) - frozenset(added)), seq=seq, version=version, count=count,
        records=records)
    return snapshot
