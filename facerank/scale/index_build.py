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

from facerank.search.index import FaceIndex, IndexPlan
from facerank.store import layout
from facerank.store.database import Database
from facerank.store.ingest import build_index_file

#: Vectors per shard task: 64 Ki x 2048-d float32 is 512 MiB in the object store.
SHARD_SIZE = 65536


def build_index_file_on_ray(folder: Path, database: Database, generation: int, plan: IndexPlan,
                            watermark: int, *, shard_size: int = SHARD_SIZE, in_flight: int = 4,
                            cpus_per_task: float = 1) -> str:
    """``build_index_file`` with the adding done by Ray tasks; returns the new file's name.

    Indexes that need no training (Flat) are built here: adding is a copy, which the trip
    through the cluster would only slow down. Shards are merged as they arrive, in id order, so
    the driver holds the index and at most ``in_flight`` shards.
    """
    if not plan.train_size:
        return build_index_file(folder, database, generation, plan, watermark)
    import ray

    with database.reading() as sql:
        ids = Database.vector_ids(sql, generation)
        dim = int(Database.generation(sql, generation)[1])
    if len(ids) < plan.train_size:
        # Too few to train: the index would hold them exactly; nothing to distribute.
        return build_index_file(folder, database, generation, plan, watermark)
    index = FaceIndex(dim, plan=plan)
    sample = np.random.default_rng(0).choice(ids, plan.train_size, replace=False)
    with database.reading() as sql:
        index.train(Database.vectors(sql, generation, sample, dim)[1])
    empty = ray.put(index.to_bytes())
    fill = ray.remote(num_cpus=cpus_per_task)(_fill_shard)
    ranges = [ids[start:start + shard_size] for start in range(0, len(ids), shard_size)]
    pending: dict = {}               # task -> shard number
    arrived: dict[int, bytes] = {}   # shards done, waiting for an earlier one to merge first
    merged = 0

    def collect_one() -> None:
        nonlocal merged
        done, _ = ray.wait(list(pending), num_returns=1)
        arrived[pending.pop(done[0])] = ray.get(done[0])
        while merged in arrived:  # in id order: the same lists as one sequential build
            index.merge([FaceIndex.from_bytes(arrived.pop(merged), plan=plan)])
            merged += 1

    for number, shard_ids in enumerate(ranges):
        while len(pending) + len(arrived) >= in_flight:
            collect_one()
        with database.reading() as sql:
            _, vectors = Database.vectors(sql, generation, shard_ids, dim)
        pending[fill.remote(empty, plan, shard_ids, vectors, max(1, int(cpus_per_task)))] = number
    while pending:
        collect_one()
    index_file = layout.index_file_name(generation, watermark)
    index.save(folder / index_file)
    return index_file


def _fill_shard(empty: bytes, plan: IndexPlan, ids: np.ndarray, vectors: np.ndarray,
                threads: int) -> bytes:
    """One shard: the trained, empty index with these vectors added (runs in a Ray task)."""
    import faiss

    faiss.omp_set_num_threads(threads)  # the CPUs this task asked for, not the node's
    shard = FaceIndex.from_bytes(empty, plan=plan)
    shard.add(ids, vectors)
    return shard.to_bytes()
