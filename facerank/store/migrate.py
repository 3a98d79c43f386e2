"""Making a store's database: a new one, or one migrated from an older format.

Schema changes are small numbered steps from ``PRAGMA user_version``: from format 1
(``store.json`` naming ``index-<n>.faiss`` and ``records-<n>.jsonl``) to the database, and from
schema 2 to 3 (galleries: records relative to the folder they were synced from).
A migration is one transaction: a crash before its commit leaves the old files as they were and
the next open migrates again; the old files are deleted only once it has committed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from facerank import __version__
from facerank.errors import StoreError
from facerank.folder_lock import FolderLock
from facerank.search.index import DEFAULT_FACTORY, FaceIndex, IndexPlan
from facerank.store import layout
from facerank.store.database import SCHEMA_VERSION, Database
from facerank.store.ingest import READ_CHUNK, build_index_file, switch_index
from facerank.store.results import Record

FORMAT = 2
#: The identity a migrated generation gets when its vectors could not be read back exactly (a
#: compressed index): never a model's, so the next write re-embeds every record.
NEEDS_REEMBED = "migrated-from-a-compressed-index"


def prepare(folder: Path, database: Database, model_config, *, lock_wait: float | None
            ) -> None:
    """Check ``folder``'s database, or make it (migrated from format 1, or empty)."""
    _check_schema(folder, database)
    if database.is_initialised():
        if database.schema_version() < SCHEMA_VERSION:
            with FolderLock(folder, wait=lock_wait), database.writing() as sql:
                Database.upgrade_schema(sql)  # a no-op if another process just did it
        return
    with FolderLock(folder, wait=lock_wait):
        _check_schema(folder, database)
        if database.is_initialised():
            _remove_legacy_files(folder)  # a migration that committed, then crashed
            return
        legacy = folder / layout.LEGACY_STATE_FILE
        migrated = legacy.exists()
        with database.writing() as sql:
            Database.create_schema(sql)
            if migrated:
                _migrate_format_1(folder, sql, legacy)
            else:
                generation = Database.new_generation(sql, model_config.identity,
                                                     model_config.embedding_dim, "current")
                Database.set_meta(sql, generation=generation, index_file=None,
                                  index_watermark=0, index_factory=DEFAULT_FACTORY, version=1)
            Database.set_meta(sql, format=FORMAT, created_by=__version__,
                              created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        _remove_legacy_files(folder)
        if migrated:
            _build_first_index(folder, database)


def _build_first_index(folder: Path, database: Database) -> None:
    """The migrated vectors' index file, streamed from the database (a crash before its switch
    leaves a store that answers from its change log until the next compaction)."""
    with database.reading() as sql:
        meta = Database.all_meta(sql)
        count = int(sql.execute("SELECT count(*) FROM vectors").fetchone()[0])
        watermark = Database.last_change(sql)
    if count == 0:
        return
    generation = int(meta["generation"])
    plan = IndexPlan.for_factory(meta.get("index_factory") or DEFAULT_FACTORY)
    index_file = build_index_file(folder, database, generation, plan, watermark)
    with database.writing() as sql:
        switch_index(sql, folder, index_file, watermark, plan.factory)
        Database.bump_version(sql)


def _check_schema(folder: Path, database: Database) -> None:
    if database.path.exists():
        version = database.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(f"{folder} uses store schema {version}, this facerank "
                             f"({__version__}) reads schema {SCHEMA_VERSION} and older; use a "
                             "matching facerank version or rebuild the index")


def _migrate_format_1(folder: Path, sql, legacy: Path) -> None:
    try:
        state = json.loads(legacy.read_text("utf-8"))
    except (OSError, ValueError) as error:
        raise StoreError(f"{legacy}: damaged ({error}); rebuild the index with `facerank index "
                         f"build GALLERY --store {folder}`") from None
    if state.get("format_version") != 1:
        raise StoreError(f"{folder} uses store format {state.get('format_version')}, this "
                         f"facerank ({__version__}) reads format 1 and {FORMAT}; use a matching "
                         "facerank version or rebuild the index")
    factory = state.get("index_factory", DEFAULT_FACTORY)
    try:
        index = FaceIndex.load(folder / state["index_file"], factory=factory)
        records = [Record(**json.loads(line)) for line in
                   (folder / state["records_file"]).read_text("utf-8").splitlines() if line.strip()]
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as error:
        raise StoreError(f"{folder}: the format-1 index or its records cannot be read ({error}); "
                         f"rebuild with `facerank index build GALLERY --store {folder}`") from None
    # Exact indexes (Flat, and IVF-Flat through its direct map) give the vectors back as they
    # were embedded; compressed ones only an approximation, so those are embedded again.
    exact = index.is_exact or (factory.endswith(",Flat") and "PQ" not in factory)
    identity = state.get("model_identity", "") if exact else NEEDS_REEMBED
    generation = Database.new_generation(sql, identity, index.dim, "current")
    for record in records:
        Database.insert_record(sql, Record(record.id, layout.stored_path(folder, record.path),
                                           record.person, record.sha256, record.size,
                                           record.mtime_ns), with_id=True)
    ids = [record.id for record in records]
    if exact:
        for start in range(0, len(ids), READ_CHUNK):  # bounded memory at any size
            chunk = ids[start:start + READ_CHUNK]
            Database.insert_vectors(sql, generation, chunk,
                                    np.stack([index.reconstruct(i) for i in chunk]))
            Database.log_added(sql, chunk)
    # Ids of removed images were never reused in format 1 either: keep counting from its next.
    # (sqlite_sequence has no key: update its row, or add it if inserting with ids made none.)
    next_id = int(state.get("next_id", max(ids, default=-1) + 1))
    last = max(next_id - 1, max(ids, default=0))
    if sql.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'records'",
                   (last,)).rowcount == 0:
        sql.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?)", (last,))
    Database.set_meta(sql, generation=generation, index_file=None, index_watermark=0,
                      index_factory=factory, index_chosen_for=state.get("index_chosen_for"),
                      calibration=state.get("calibration"), version=1,
                      migrated_from={"format": 1, "generation": state.get("generation")})


def _remove_legacy_files(folder: Path) -> None:
    for pattern in layout.LEGACY_PATTERNS:
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
    (folder / layout.LEGACY_STATE_FILE).unlink(missing_ok=True)
