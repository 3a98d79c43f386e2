"""The store's one source of truth: an SQLite database of records, their vectors and every change.

    records       one row per indexed image (id, gallery, location, person, sha256, size,
                  mtime_ns); ``location`` is the path relative to its gallery's root when
                  ``gallery`` is set, else the path as ``layout.stored_path`` gives it
    galleries     the folders galleries were synced from (id, root): a moved or renamed gallery
                  is one row changed, its records' paths untouched
    generations   one per model that embedded the records; the current one answers queries, a
                  ``building`` one is a re-embed in progress, resumed by the next writer
    vectors       (generation, record) -> float32 face print
    changes       an append-only log (seq, record, added): what the index file does not hold yet
    meta          key -> JSON: current generation, index file and the change it covers, index
                  kind, calibration, and ``version``, bumped by every commit queries must see

The FAISS index is derived from this database and carries the watermark (the last change it
holds); everything after it is replayed from ``changes``. One write is one transaction, so a
crash leaves the database as of its last commit; WAL mode lets readers in other processes read a
consistent state while one writer works. The schema's version is ``PRAGMA user_version``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from facerank.store.results import Record

#: PRAGMA user_version of the current schema. Format 1 was store.json + records-N.jsonl files;
#: schema 2 kept every gallery file's path absolute.
SCHEMA_VERSION = 3

# Galleries: records of files under a synced folder keep their path relative to it. Roots end
# with a separator and never nest (syncing a folder that holds known galleries absorbs them).
_GALLERY_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS galleries (
           id INTEGER PRIMARY KEY AUTOINCREMENT, root TEXT NOT NULL UNIQUE)""",
    "CREATE INDEX IF NOT EXISTS records_by_location ON records (gallery, location)",
)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # AUTOINCREMENT: an id is never handed out twice, even after the highest one is removed, so
    # an id in an old answer or an old index file can never name another image.
    """CREATE TABLE IF NOT EXISTS records (
           id INTEGER PRIMARY KEY AUTOINCREMENT, location TEXT NOT NULL, person TEXT NOT NULL,
           sha256 TEXT NOT NULL, size INTEGER NOT NULL DEFAULT 0,
           mtime_ns INTEGER NOT NULL DEFAULT 0, gallery INTEGER)""",
    *_GALLERY_SCHEMA,
    "CREATE INDEX IF NOT EXISTS records_by_sha256 ON records (sha256)",
    "CREATE INDEX IF NOT EXISTS records_by_person ON records (person)",
    """CREATE TABLE IF NOT EXISTS generations (
           id INTEGER PRIMARY KEY AUTOINCREMENT, model_identity TEXT NOT NULL,
           dim INTEGER NOT NULL, status TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS vectors (
           generation INTEGER NOT NULL, record INTEGER NOT NULL, vector BLOB NOT NULL,
           PRIMARY KEY (generation, record))""",
    # Removing a record deletes its vectors in every generation: by record, not by the key.
    "CREATE INDEX IF NOT EXISTS vectors_by_record ON vectors (record)",
    """CREATE TABLE IF NOT EXISTS changes (
           seq INTEGER PRIMARY KEY AUTOINCREMENT, record INTEGER NOT NULL,
           added INTEGER NOT NULL)""",
)

_RECORD_COLUMNS = "id, location, person, sha256, size, mtime_ns"
# A record with its full path (the gallery's root joined to it); filters name columns as r.*.
_SELECT_RECORDS = ("SELECT r.id, CASE WHEN r.gallery IS NULL THEN r.location ELSE g.root || "
                   "r.location END, r.person, r.sha256, r.size, r.mtime_ns FROM records AS r "
                   "LEFT JOIN galleries AS g ON g.id = r.gallery")


def to_sql(text: str) -> str:
    """A path or name as SQLite can store it. File names that are not valid UTF-8 reach Python
    with lone surrogates (surrogateescape), which SQLite's UTF-8 text refuses: each becomes a
    character of Unicode's private-use plane 15, one for one, so equality and prefixes still
    work and ``from_sql`` gives the name back."""
    if text.isascii():
        return text
    return "".join(chr(0xF0000 + ord(c) - 0xD800) if 0xD800 <= ord(c) <= 0xDFFF else c
                   for c in text)


def from_sql(text: str) -> str:
    if text.isascii():
        return text
    return "".join(chr(0xD800 + ord(c) - 0xF0000) if 0xF0000 <= ord(c) <= 0xF07FF else c
                   for c in text)


def _record(row) -> Record:
    return Record(row[0], from_sql(row[1]), from_sql(row[2]), *row[3:])


class Database:
    """The store's SQLite file, with one connection per thread (sqlite3's rule).

    >>> database = Database("faces/store.sqlite")
    >>> with database.writing() as sql:
    ...     database.set_meta(sql, calibration={"threshold": 0.8})
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # Autocommit mode: transactions are opened explicitly below, reads included, so
            # that several SELECTs see one state.
            connection = sqlite3.connect(self.path, timeout=60.0, isolation_level=None,
                                         check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before it returns, so a committed addition survives a
            # power cut too, not only a killed process.
            connection.execute("PRAGMA synchronous=FULL")
            self._local.connection = connection
        return connection

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed as a whole on success, rolled back otherwise."""
        connection = self.connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back by itself (disk full, I/O error): then there is
            # nothing to roll back, and the connection must not stay inside a transaction.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every SELECT inside it sees the same committed state."""
        connection = self.connection()
        connection.execute("BEGIN")
        try:
            yield connection
        finally:
            if connection.in_transaction:
                connection.execute("COMMIT")

    # -- schema ----------------------------------------------------------------------------------

    def is_initialised(self) -> bool:
        if not self.path.exists():
            return False
        with self.reading() as sql:
            version = sql.execute("PRAGMA user_version").fetchone()[0]
            return version != 0 and self.meta(sql, "format") is not None

    def schema_version(self) -> int:
        with self.reading() as sql:
            return sql.execute("PRAGMA user_version").fetchone()[0]

    @staticmethod
    def create_schema(sql: sqlite3.Connection) -> None:
        """Create the tables inside the caller's write transaction (SQLite's DDL is
        transactional: a crash before the commit leaves no half-made schema)."""
        for statement in _SCHEMA:
            sql.execute(statement)
        sql.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def upgrade_schema(sql: sqlite3.Connection) -> None:
        """Schema 2 -> 3, inside the caller's write transaction: the galleries table and the
        records' gallery column. Records keep their absolute paths until their gallery is next
        synced, which makes them relative to it."""
        version = sql.execute("PRAGMA user_version").fetchone()[0]
        if version == 2:
            # Renamed so that a facerank of schema 2 still running on this store fails loudly
            # ("no such column: path") instead of writing full paths into gallery records.
            sql.execute("ALTER TABLE records RENAME COLUMN path TO location")
            sql.execute("ALTER TABLE records ADD COLUMN gallery INTEGER")
            for statement in _GALLERY_SCHEMA:
                sql.execute(statement)
            sql.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- meta ------------------------------------------------------------------------------------

    @staticmethod
    def meta(sql: sqlite3.Connection, key: str, default=None):
        row = sql.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    @staticmethod
    def all_meta(sql: sqlite3.Connection) -> dict:
        return {key: json.loads(value) for key, value in sql.execute("SELECT key, value FROM meta")}

    @staticmethod
    def set_meta(sql: sqlite3.Connection, **values) -> None:
        sql.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO "
                        "UPDATE SET value = excluded.value",
                        [(key, json.dumps(value)) for key, value in values.items()])

    @classmethod
    def bump_version(cls, sql: sqlite3.Connection) -> int:
        """Mark a change queries must see; returns the new version."""
        version = int(cls.meta(sql, "version", 0)) + 1
        cls.set_meta(sql, version=version)
        return version

    @staticmethod
    def version(sql: sqlite3.Connection) -> int:
        row = sql.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return 0 if row is None else int(row[0])

    # -- records ---------------------------------------------------------------------------------

    @staticmethod
    def insert_record(sql: sqlite3.Connection, record: Record, *, with_id: bool = False) -> int:
        """Insert a record given with its full path (kept relative to its gallery, if any)."""
        gallery, path = Database._place(sql, record.path)
        values = (gallery, to_sql(path), to_sql(record.person), record.sha256, record.size,
                  record.mtime_ns)
        if with_id:
            sql.execute(f"INSERT INTO records (gallery, {_RECORD_COLUMNS}) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", (values[0], record.id, *values[1:]))
            return record.id
        cursor = sql.execute("INSERT INTO records (gallery, location, person, sha256, size, "
                             "mtime_ns) "
                             "VALUES (?, ?, ?, ?, ?, ?)", values)
        return int(cursor.lastrowid)

    @staticmethod
    def delete_records(sql: sqlite3.Connection, ids: Sequence[int]) -> None:
        """Delete records, their vectors in every generation, and log their removal."""
        for start in range(0, len(ids), 10_000):
            chunk = [(int(i),) for i in ids[start:start + 10_000]]
            sql.executemany("DELETE FROM records WHERE id = ?", chunk)
            sql.executemany("DELETE FROM vectors WHERE record = ?", chunk)
            sql.executemany("INSERT INTO changes (record, added) VALUES (?, 0)", chunk)

    @staticmethod
    def update_file(sql: sqlite3.Connection, record_id: int, *, path: str | None = None,
                    sha256: str | None = None, size: int, mtime_ns: int) -> None:
        """A record's file seen again: moved (new path), touched (new stat) or rewritten in
        place with the same face (new hash, re-embedded under the same id)."""
        if path is not None:
            gallery, path = Database._place(sql, path)
            sql.execute("UPDATE records SET gallery = ?, location = ? WHERE id = ?",
                        (gallery, to_sql(path), int(record_id)))
        sql.execute("UPDATE records SET sha256 = COALESCE(?, sha256), size = ?, mtime_ns = ? "
                    "WHERE id = ?", (sha256, size, mtime_ns, int(record_id)))

    @staticmethod
    def records(sql: sqlite3.Connection, where: str = "", parameters: Iterable = ()
                ) -> list[Record]:
        """Records matching ``where`` (naming columns as ``r.person``...), with full paths;
        text parameters (paths, names) are passed through ``to_sql`` here."""
        rows = sql.execute(f"{_SELECT_RECORDS} {where} ORDER BY r.id",
                           tuple(to_sql(p) if isinstance(p, str) else p for p in parameters))
        return [_record(row) for row in rows]

    @staticmethod
    def record_at(sql: sqlite3.Connection, path: str) -> Record | None:
        """The record of the file at ``path`` (a full path, as ``stored_path`` gives it)."""
        places = [(gallery, path[len(root):]) for gallery, root in Database._roots(sql)
                  if path.startswith(root)] + [(None, path)]
        for gallery, stored in places:
            rows = Database.records(sql, "WHERE r.gallery IS ? AND r.location = ?",
                                    (gallery, stored))
            if rows:
                return rows[-1]
        return None

    @staticmethod
    def records_under(sql: sqlite3.Connection, root: str) -> list[Record]:
        """Records of files under the folder ``root`` (ending with a separator)."""
        found: dict[int, Record] = {}
        for gallery, known in Database._roots(sql):
            if known.startswith(root):
                where, parameters = "WHERE r.gallery = ?", (gallery,)
            elif root.startswith(known):
                inside = root[len(known):]
                where = "WHERE r.gallery = ? AND substr(r.location, 1, ?) = ?"
                parameters = (gallery, len(inside), inside)
            else:
                continue
            found.update((r.id, r) for r in Database.records(sql, where, parameters))
        found.update((r.id, r) for r in Database.records(
            sql, "WHERE r.gallery IS NULL AND substr(r.location, 1, ?) = ?", (len(root), root)))
        return [found[i] for i in sorted(found)]

    # -- galleries -------------------------------------------------------------------------------

    @staticmethod
    def _roots(sql: sqlite3.Connection) -> list[tuple[int, str]]:
        return [(gallery, from_sql(root)) for gallery, root in
                sql.execute("SELECT id, root FROM galleries ORDER BY length(root)")]

    @staticmethod
    def _place(sql: sqlite3.Connection, path: str) -> tuple[int | None, str]:
        """(gallery, path as stored): relative to the gallery whose root holds ``path``."""
        for gallery, root in Database._roots(sql):
            if path.startswith(root):
                return gallery, path[len(root):]
        return None, path

    @staticmethod
    def galleries(sql: sqlite3.Connection) -> dict[int, str]:
        """Every gallery's root, by id."""
        return dict(Database._roots(sql))

    @staticmethod
    def open_gallery(sql: sqlite3.Connection, root: str) -> int:
        """The gallery holding folder ``root`` (ending with a separator), made if none does;
        galleries inside it join it, and records under it kept by full path so far (added
        before, or by a facerank of schema 2) become relative to it."""
        # Galleries whose records are all gone are forgotten: none can be moved from them.
        sql.execute("DELETE FROM galleries WHERE id NOT IN (SELECT DISTINCT gallery FROM records "
                    "WHERE gallery IS NOT NULL)")
        holding = [(gallery, known) for gallery, known in Database._roots(sql)
                   if root.startswith(known)]
        if holding:
            [(gallery, known)] = holding  # roots never nest
        else:
            gallery, known = int(sql.execute("INSERT INTO galleries (root) VALUES (?)",
                                              (to_sql(root),)).lastrowid), root
            for inner, inner_root in Database._roots(sql):
                if inner != gallery and inner_root.startswith(root):
                    sql.execute("UPDATE records SET gallery = ?, location = ? || location "
                                "WHERE gallery = ?", (gallery, to_sql(inner_root[len(root):]),
                                                      inner))
                    sql.execute("DELETE FROM galleries WHERE id = ?", (inner,))
        sql.execute("UPDATE records SET gallery = ?, location = substr(location, ?) WHERE "
                    "gallery IS NULL AND substr(location, 1, ?) = ?",
                    (gallery, len(known) + 1, len(root), to_sql(root)))
        return gallery

    @staticmethod
    def move_gallery(sql: sqlite3.Connection, gallery: int, root: str, following: set[int]
                     ) -> None:
        """The gallery's folder is now ``root``. The ``following`` records (files found there)
        follow it unchanged; its others keep their old full paths, outside any gallery, where
        a later sync finds them again by content or leaves them be."""
        [old_root] = sql.execute("SELECT root FROM galleries WHERE id = ?",
                                 (int(gallery),)).fetchone()
        staying = [(old_root, i) for (i,) in sql.execute(
            "SELECT id FROM records WHERE gallery = ?", (int(gallery),)) if i not in following]
        sql.executemany("UPDATE records SET gallery = NULL, location = ? || location "
                        "WHERE id = ?", staying)
        sql.execute("UPDATE galleries SET root = ? WHERE id = ?", (to_sql(root), int(gallery)))

    @staticmethod
    def gallery_records(sql: sqlite3.Connection, gallery: int
                        ) -> list[tuple[int, str, str, str]]:
        """(id, path relative to the gallery, person, sha256) of a gallery's records."""
        return [(i, from_sql(path), from_sql(person), sha256) for i, path, person, sha256 in
                sql.execute("SELECT id, location, person, sha256 FROM records WHERE gallery = ?",
                            (int(gallery),))]

    @staticmethod
    def records_by_id(sql: sqlite3.Connection, ids: Iterable[int]) -> dict[int, Record]:
        wanted = sorted({int(i) for i in ids})
        found: dict[int, Record] = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start:start + 900]
            marks = ",".join("?" * len(chunk))
            for row in sql.execute(f"{_SELECT_RECORDS} WHERE r.id IN ({marks})", chunk):
                found[row[0]] = _record(row)
        return found

    @staticmethod
    def people_counts(sql: sqlite3.Connection) -> dict[str, int]:
        return {from_sql(person): count for person, count in
                sql.execute("SELECT person, count(*) FROM records GROUP BY person")}

    @staticmethod
    def count(sql: sqlite3.Connection) -> int:
        return int(sql.execute("SELECT count(*) FROM records").fetchone()[0])

    # -- generations and vectors -----------------------------------------------------------------

    @staticmethod
    def generation(sql: sqlite3.Connection, generation_id: int) -> tuple[str, int, str] | None:
        """(model identity, dim, status) of a generation."""
        return sql.execute("SELECT model_identity, dim, status FROM generations WHERE id = ?",
                           (int(generation_id),)).fetchone()

    @staticmethod
    def building_generation(sql: sqlite3.Connection, model_identity: str) -> int | None:
        row = sql.execute("SELECT id FROM generations WHERE status = 'building' AND "
                          "model_identity = ? ORDER BY id DESC", (model_identity,)).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def new_generation(sql: sqlite3.Connection, model_identity: str, dim: int, status: str) -> int:
        # A building generation of another model (a retrain interrupted, then another retrain)
        # can never become current: its vectors go.
        stale = [row[0] for row in sql.execute(
            "SELECT id FROM generations WHERE status = 'building'")]
        for old in stale:
            sql.execute("DELETE FROM vectors WHERE generation = ?", (old,))
            sql.execute("UPDATE generations SET status = 'abandoned' WHERE id = ?", (old,))
        cursor = sql.execute("INSERT INTO generations (model_identity, dim, status) "
                             "VALUES (?, ?, ?)", (model_identity, int(dim), status))
        return int(cursor.lastrowid)

    @staticmethod
    def insert_vectors(sql: sqlite3.Connection, generation_id: int, ids: Sequence[int],
                       vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        sql.executemany("INSERT OR REPLACE INTO vectors (generation, record, vector) "
                        "VALUES (?, ?, ?)",
                        [(int(generation_id), int(i), v.tobytes()) for i, v in zip(ids, vectors)])

    @staticmethod
    def log_added(sql: sqlite3.Connection, ids: Sequence[int]) -> None:
        sql.executemany("INSERT INTO changes (record, added) VALUES (?, 1)",
                        [(int(i),) for i in ids])

    @staticmethod
    def last_change(sql: sqlite3.Connection) -> int:
        row = sql.execute("SELECT max(seq) FROM changes").fetchone()
        stored = Database.meta(sql, "index_watermark", 0)
        return max(int(row[0] or 0), int(stored or 0))

    @staticmethod
    def vectors(sql: sqlite3.Connection, generation_id: int, ids: Sequence[int], dim: int
                ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of ``ids`` that have a vector in the generation, in ``ids`` order."""
        found: dict[int, bytes] = {}
        wanted = [int(i) for i in ids]
        for start in range(0, len(wanted), 900):
            chunk = wanted[start:start + 900]
            marks = ",".join("?" * len(chunk))
            found.update(sql.execute(f"SELECT record, vector FROM vectors WHERE generation = ? "
                                     f"AND record IN ({marks})", [int(generation_id), *chunk]))
        kept = [i for i in wanted if i in found]
        matrix = np.empty((len(kept), dim), np.float32)
        for row, record_id in enumerate(kept):
            matrix[row] = np.frombuffer(found[record_id], np.float32)
        return np.array(kept, np.int64), matrix

    @staticmethod
    def having_vector(sql: sqlite3.Connection, generation_id: int, ids: Sequence[int]
                      ) -> list[int]:
        """Which of ``ids`` have a vector in the generation."""
        wanted, found = [int(i) for i in ids], []
        for start in range(0, len(wanted), 900):
            chunk = wanted[start:start + 900]
            marks = ",".join("?" * len(chunk))
            found += [row[0] for row in sql.execute(
                f"SELECT record FROM vectors WHERE generation = ? AND record IN ({marks})",
                [int(generation_id), *chunk])]
        return found

    @staticmethod
    def paths_in_use(sql: sqlite3.Connection, paths: Sequence[str]) -> set[str]:
        """Which of ``paths`` (the store's own uploads, never in a gallery) records hold."""
        used = set()
        for start in range(0, len(paths), 900):
            chunk = [to_sql(p) for p in paths[start:start + 900]]
            marks = ",".join("?" * len(chunk))
            used |= {from_sql(row[0]) for row in sql.execute(
                f"SELECT location FROM records WHERE gallery IS NULL AND location IN ({marks})",
                chunk)}
        return used

    @staticmethod
    def vector_ids(sql: sqlite3.Connection, generation_id: int) -> np.ndarray:
        rows = sql.execute("SELECT record FROM vectors WHERE generation = ? ORDER BY record",
                           (int(generation_id),)).fetchall()
        return np.array([row[0] for row in rows], np.int64)

    @staticmethod
    def records_without_vector(sql: sqlite3.Connection, generation_id: int) -> list[Record]:
        return Database.records(sql, "WHERE r.id NOT IN (SELECT record FROM vectors WHERE "
                                     "generation = ?)", (int(generation_id),))

    @staticmethod
    def changes_after(sql: sqlite3.Connection, seq: int) -> list[tuple[int, int, int]]:
        """(seq, record, added) after ``seq``, oldest first."""
        return sql.execute("SELECT seq, record, added FROM changes WHERE seq > ? ORDER BY seq",
                           (int(seq),)).fetchall()
