"""Tuning a store's index after a build, and keeping the tuned parameters with the store.

The parameters and what they measured live in the database's meta (``index_search_parameters``,
``index_tuning``), not only inside the FAISS file: every load of the index applies them
(``load_base``), and a switch to an index of another kind drops them
(``facerank.store.ingest.switch_index``), since nprobe tuned for one kind means nothing for
another.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from facerank.search.index import FaceIndex
from facerank.search.tuning import Tuning, tune
from facerank.store.database import Database

#: Stored vectors used as queries (each left out of its own answers).
SAMPLE = 200
#: Vectors read from the database at a time for the exact ground truth.
READ_CHUNK = 8192


def load_base(path: Path, meta: dict, *, factory: str) -> FaceIndex:
    """The index file at ``path`` with the store's tuned search parameters applied."""
    index = FaceIndex.load(path, factory=factory)
    tuned = meta.get("index_search_parameters") or {}
    if tuned and meta.get("index_factory") == factory:
        index.set_search_parameters(**tuned)
    return index


def tune_base(writer, *, target_recall: float | None = None,
              target_latency_ms: float | None = None, k: int = 10,
              sample: int = SAMPLE) -> Tuning:
    """Tune the search parameters of the writer's base index against exact search over its
    stored vectors, record them in the store, and publish the tuned index.

    The sweep runs on a copy (queries keep answering from the published index meanwhile), so
    the index is briefly held twice in memory.
    """
    snapshot = writer.snapshot
    database, generation, dim = writer.database, snapshot.generation, snapshot.dim
    base = snapshot.base
    ids = base.ids if len(base) else np.zeros(0, np.int64)
    ids = np.sort(ids[~np.isin(ids, np.array(sorted(snapshot.removed), np.int64))])
    picked = np.random.default_rng(0).choice(ids, min(sample, len(ids)), replace=False)
    with database.reading() as sql:
        query_ids, queries = Database.vectors(sql, generation, picked, dim)

    def blocks():
        for start in range(0, len(ids), READ_CHUNK):
            with database.reading() as sql:
                yield Database.vectors(sql, generation, ids[start:start + READ_CHUNK], dim)

    tuned = base.copy()
    tuning = tune(tuned, queries, vectors=blocks(), query_ids=query_ids,
                  target_recall=target_recall, target_latency_ms=target_latency_ms, k=k)
    with database.writing() as sql:
        Database.set_meta(sql, index_search_parameters=tuning.parameters,
                          index_tuning=tuning.to_json())
        version = Database.bump_version(sql)
        meta = Database.all_meta(sql)
    writer.publish(replace(writer.snapshot, base=tuned, version=version, meta=meta))
    return tuning
