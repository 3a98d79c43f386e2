"""A store's records and vectors as one Parquet file, for any vector store or data tool to load.

    >>> export_parquet(store, "faces.parquet")
    >>> pyarrow.parquet.read_table("faces.parquet").column_names
    ['id', 'path', 'person', 'sha256', 'vector']

One row per searchable record; ``vector`` is a fixed-size list of float32 (the store's
dimension). The file's metadata names the model that embedded the vectors (its identity), the
dimension and the distance the store uses (Euclidean on these vectors). Written in chunks, so
memory stays bounded by a chunk, and atomically: a crash leaves no half file under the name.
Needs pyarrow (the ray extra brings it).
"""

from __future__ import annotations

import json
from pathlib import Path

from facerank import atomic
from facerank.errors import MissingExtraError
from facerank.store.database import Database

#: Records per Parquet row group (and per read from the database): 8 Ki x 2048 floats = 64 MiB.
CHUNK = 8192


def export_parquet(store, path: str | Path) -> int:
    """Write ``store``'s searchable records with their vectors to ``path``; returns the rows."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtraError('exporting Parquet needs pyarrow: pip install pyarrow (or '
                                '"facerank[ray]")') from None
    written = 0

    def write(temporary: Path) -> None:
        nonlocal written
        # One read transaction: the file is one committed state, whatever writers do meanwhile.
        with store.database.reading() as sql:
            generation = int(Database.meta(sql, "generation"))
            identity, dim, _ = Database.generation(sql, generation)
            schema = pa.schema(
                [("id", pa.int64()), ("path", pa.string()), ("person", pa.string()),
                 ("sha256", pa.string()), ("vector", pa.list_(pa.float32(), dim))],
                metadata={"facerank": json.dumps({
                    "model_identity": identity, "dim": dim, "distance": "euclidean",
                    "generation": generation})})
            ids = Database.vector_ids(sql, generation)
            with pq.ParquetWriter(str(temporary), schema) as out:
                for start in range(0, len(ids), CHUNK):
                    chunk_ids, vectors = Database.vectors(sql, generation,
                                                          ids[start:start + CHUNK], dim)
                    records = Database.records_by_id(sql, chunk_ids)
                    rows = [store._resolved(records[int(i)]) for i in chunk_ids]
                    out.write_table(pa.table({
                        "id": pa.array(chunk_ids, pa.int64()),
                        "path": [r.path for r in rows], "person": [r.person for r in rows],
                        "sha256": [r.sha256 for r in rows],
                        "vector": pa.FixedSizeListArray.from_arrays(
                            pa.array(vectors.reshape(-1), pa.float32()), dim)}, schema=schema))
                    written += len(rows)

    atomic.write_with(path, write)
    return written
