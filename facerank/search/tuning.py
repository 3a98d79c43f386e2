"""Tuning an index's search parameters against exact search, as autofaiss does after a build.

An approximate index answers as well as its search parameters let it: the IVF lists visited per
query (``nprobe``) and, for re-ranked indexes, how many candidates are re-ranked per wanted
neighbour (``k_factor``). ``tune`` measures recall@k against exact search (FAISS's
``contrib.exhaustive_search.knn_ground_truth``, streamed block by block so the vectors need not
fit in memory at once) and single-query latency for each setting, then keeps the cheapest setting
that reaches a recall target, or the most accurate one within a latency target.

The sweep searches through ``FaceIndex.search`` rather than ``faiss.ParameterSpace.explore``:
facerank re-ranks refined indexes itself (by id, see ``facerank.search.index._rerank``), which FAISS's
explorer would bypass.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure
from faiss.contrib.exhaustive_search import knn_ground_truth

from facerank.search.index import FaceIndex, split_refine
from facerank.errors import UsageError

#: Recall@k wanted when neither a recall nor a latency target is given.
DEFAULT_TARGET_RECALL = 0.95
#: Re-ranking depths tried for refined indexes (k x k_factor candidates); index_scale.md found
#: no gain past 16 at 100k and 1M faces, 32 is the margin.
K_FACTORS = (2, 4, 8, 16, 32)
#: Queries timed one at a time per setting (p50); recall uses every query.
TIMED_QUERIES = 30


@dataclass(frozen=True)
class Setting:
    """One measured point of the sweep."""

    nprobe: int        # IVF lists visited (0: not an IVF index)
    k_factor: int      # re-ranking depth (0: no re-ranking)
    recall: float      # recall@k against exact search, over every query
    p50_ms: float      # median single-query latency


@dataclass(frozen=True)
class Tuning:
    """The chosen search parameters and what they measured.

    >>> tuning = tune(index, queries, vectors=(ids, vectors), target_recall=0.95)
    >>> tuning.parameters, tuning.recall, tuning.p50_ms
    ({'nprobe': 16}, 0.962, 1.8)
    """

    parameters: dict = field(default_factory=dict)  # FaceIndex.set_search_parameters keywords
    recall: float = 1.0                    # recall@k of the chosen setting (1.0: exact index)
    p50_ms: float = 0.0                    # its median single-query latency
    k: int = 10
    queries: int = 0                       # queries measured
    target_recall: float | None = None
    target_latency_ms: float | None = None
    met: bool = True                       # whether the chosen setting meets the target(s)
    factory: str = ""
    sweep: tuple[Setting, ...] = ()        # every setting measured, in sweep order

    def to_json(self) -> dict:
        return {"parameters": dict(self.parameters), "recall": self.recall,
                "p50_ms": self.p50_ms, "k": self.k, "queries": self.queries,
                "target_recall": self.target_recall, "target_latency_ms": self.target_latency_ms,
                "met": self.met, "factory": self.factory,
                "sweep": [vars(setting) for setting in self.sweep]}

    @classmethod
    def from_json(cls, value: dict) -> Tuning:
        return cls(**{**value, "sweep": tuple(Setting(**s) for s in value.get("sweep", ()))})


def tune(index: FaceIndex, queries: np.ndarray, *,
         vectors: tuple[np.ndarray, np.ndarray] | Iterable[tuple[np.ndarray, np.ndarray]],
         query_ids: np.ndarray | None = None, target_recall: float | None = None,
         target_latency_ms: float | None = None, k: int = 10) -> Tuning:
    """Sweep ``index``'s search parameters against exact search and set the best on it.

    ``vectors``: every vector the index holds with its id, as one ``(ids, vectors)`` pair or an
    iterable of such blocks (streamed from a database); exact search over them is the ground
    truth. ``query_ids``: ids of queries that are themselves in the index, each left out of its
    own answers (so recall counts the neighbours, not the query finding itself). With neither
    target, ``target_recall`` is 0.95. Exact indexes have nothing to tune (recall 1.0).

    >>> tuning = tune(index, vectors[:200], vectors=(ids, vectors), query_ids=ids[:200])
    >>> index.parameters
    {'nprobe': 8}
    """
    if k < 1:
        raise UsageError(f"k must be at least 1, got {k}")
    if target_recall is not None and not 0 < target_recall <= 1:
        raise UsageError(f"target_recall must be in (0, 1], got {target_recall}")
    if target_latency_ms is not None and target_latency_ms <= 0:
        raise UsageError(f"target_latency_ms must be positive, got {target_latency_ms}")
    if target_recall is None and target_latency_ms is None:
        target_recall = DEFAULT_TARGET_RECALL
    queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    targets = {"target_recall": target_recall, "target_latency_ms": target_latency_ms,
               "k": k, "queries": len(queries), "factory": index.factory}
    if index.is_exact or len(index) == 0 or not len(queries):
        return Tuning(p50_ms=_p50_ms(index, queries, k), **targets)
    wanted = k + (query_ids is not None)
    truth = _exact_ids(queries, vectors, min(wanted, len(index)))
    truth = _without_self(truth, query_ids, k)

    def measure(nprobe: int, k_factor: int) -> Setting:
        index.set_search_parameters(nprobe=nprobe or None, k_factor=k_factor or None)
        _, found = index.search(queries, min(wanted, len(index)))
        recall = knn_intersection_measure(_without_self(found, query_ids, k), truth)
        return Setting(nprobe, k_factor, round(float(recall), 4), _p50_ms(index, queries, k))

    before = index.plan
    nlist = _nlist(index.factory)
    nprobes = [2 ** i for i in range(nlist.bit_length()) if 2 ** i <= nlist] if nlist else [0]
    k_factors = K_FACTORS if split_refine(index.factory)[1] else (0,)
    sweep: list[Setting] = []
    for nprobe in nprobes:
        row = [measure(nprobe, k_factor) for k_factor in k_factors]
        sweep.extend(row)
        best = max(setting.recall for setting in row)
        if best >= 1.0 or (target_latency_ms is not None
                           and min(s.p50_ms for s in row) > 4 * target_latency_ms):
            break  # more lists cannot help, or every setting from here on is far too slow
    chosen, met = _choose(sweep, target_recall, target_latency_ms)
    index.set_search_parameters(nprobe=chosen.nprobe or before.nprobe or None,
                                k_factor=chosen.k_factor or before.k_factor or None)
    parameters = {name: value for name, value in
                  (("nprobe", chosen.nprobe), ("k_factor", chosen.k_factor)) if value}
    return Tuning(parameters=parameters, recall=chosen.recall, p50_ms=chosen.p50_ms, met=met,
                  sweep=tuple(sweep), **targets)


def _choose(sweep: list[Setting], target_recall: float | None,
            target_latency_ms: float | None) -> tuple[Setting, bool]:
    """(the setting to keep, whether it meets the targets).

    Within the latency target (if any): the fastest that reaches the recall target, else the most
    accurate. Nothing within the latency target: the fastest setting of all.
    """
    fast = [s for s in sweep if target_latency_ms is None or s.p50_ms <= target_latency_ms]
    if not fast:
        return min(sweep, key=lambda s: s.p50_ms), False
    if target_recall is not None:
        good = [s for s in fast if s.recall >= target_recall]
        if good:
            return min(good, key=lambda s: s.p50_ms), True
    # The most accurate; among equals the fastest.
    return max(fast, key=lambda s: (s.recall, -s.p50_ms)), target_recall is None


def _exact_ids(queries: np.ndarray, vectors, k: int) -> np.ndarray:
    blocks = [vectors] if isinstance(vectors, tuple) else vectors
    ids = []

    def stream():
        for block_ids, block_vectors in blocks:
            ids.append(np.asarray(block_ids, np.int64))
            yield np.ascontiguousarray(block_vectors, np.float32)

    _, positions = knn_ground_truth(queries, stream(), k, ngpu=0)
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return np.where(positions >= 0, all_ids[np.maximum(positions, 0)], -1)


def _without_self(found: np.ndarray, query_ids: np.ndarray | None, k: int) -> np.ndarray:
    """The first ``k`` answers of each row, the query's own id left out."""
    if query_ids is None:
        return found[:, :k]
    rows = []
    for row, own in zip(found, np.asarray(query_ids, np.int64)):
        rows.append(np.concatenate([row[row != own], np.full(k, -1, np.int64)])[:k])
    return np.array(rows, np.int64)


def _p50_ms(index: FaceIndex, queries: np.ndarray, k: int) -> float:
    if len(index) == 0 or not len(queries):
        return 0.0
    times = []
    for query in queries[:TIMED_QUERIES]:
        start = time.perf_counter()
        index.search(query[None], k)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 3)


def _nlist(factory: str) -> int:
    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else 0
