"""Building a store's index on a Ray cluster: trained once, filled in shards, merged.

The driver trains the planned index on a seeded sample of the stored vectors (the sample
``facerank.store.ingest.build_index_file`` takes, so both train the same centroids), sends the
trained, empty index and consecutive id ranges of vectors to Ray tasks that each fill one shard,
and merges the shards in id order (``FaceIndex.merge``: FAISS appends inverted lists and codes).
The result answers exactly as the local build of the same vectors; it is written as one new
index file, which the caller switches to in one transaction.

The vectors travel from the store's database through the driver to the tasks: the cluster needs
no access to the store's folder, and at most ``in_flight`` shards are in the object store at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facerank.index import FaceIndex, IndexPlan
from facerank.store import layout
from facerank.store.database import Database
from facerank.store.ingest import build_index_file

#: Vectors per shard task: 64 Ki x 2048-d float32 is 512 MiB in the object store.
SHARD_SIZE = 65536


def build_index_file_on_ray(folder: Path, database: Database, generation: int, plan: IndexPlan,
                            watermark: int, *, shard_size: int = SHARD_SIZE,
                            in_flight: int = 4) -> str:
    """``build_index_file`` with the adding done by Ray tasks; returns the new file's name."""
    import ray

    with database.reading() as sql:
        ids = Database.vector_ids(sql, generation)
        dim = int(Database.generation(sql, generation)[1])
    index = FaceIndex(dim, plan=plan)
    if plan.train_size:
        if len(ids) < plan.train_size:
            # Too few to train: the index would hold them exactly; nothing to distribute.
            return build_index_file(folder, database, generation, plan, watermark)
        sample = np.random.default_rng(0).choice(ids, plan.train_size, replace=False)
        with database.reading() as sql:
            index.train(Database.vectors(sql, generation, sample, dim)[1])
    empty = ray.put(index.to_bytes())
    fill = ray.remote(_fill_shard)
    pending, shards = {}, {}
    ranges = [ids[start:start + shard_size] for start in range(0, len(ids), shard_size)]
    for number, shard_ids in enumerate(ranges):
        while len(pending) >= in_flight:
            _collect(ray, pending, shards)
        with database.reading() as sql:
            _, vectors = Database.vectors(sql, generation, shard_ids, dim)
        pending[fill.remote(empty, plan, shard_ids, vectors)] = number
    while pending:
        _collect(ray, pending, shards)
    index.merge([FaceIndex.from_bytes(shards[number], plan=plan) for number in sorted(shards)])
    index_file = layout.index_file_name(generation, watermark)
    index.save(folder / index_file)
    return index_file


def _collect(ray, pending: dict, shards: dict) -> None:
    done, _ = ray.wait(list(pending), num_returns=1)
    for reference in done:
        shards[pending.pop(reference)] = ray.get(reference)


def _fill_shard(empty: bytes, plan: IndexPlan, ids: np.ndarray, vectors: np.ndarray) -> bytes:
    """One shard: the trained, empty index with these vectors added (runs in a Ray task)."""
    shard = FaceIndex.from_bytes(empty, plan=plan)
    shard.add(ids, vectors)
    return shard.to_bytes()
