"""A plan for a gallery this machine does not hold: index kind, shards, memory, recall, latency,
hours and nodes, from measured figures.

Every number comes from ``measured_costs.json`` (beside this module), which
``python benchmarks/plan_costs.py`` copies out of ``benchmarks/results/index_scale.json`` and
``embedding_speed.json``; what is scaled beyond what was measured says so (``extrapolated``).

>>> plan = plan_scale(100_000_000, memory_budget_bytes=64 * 2**30)
>>> plan.shards, plan.factory
(3, 'PCAR256,IVF16384,PQ32np,Refine(SQ6)')
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources

from facerank.errors import UsageError
from facerank.search.index import choose_index

#: Shards tried before giving up: a budget this small for this many faces is a typo.
MAX_SHARDS = 1_000_000


@dataclass(frozen=True)
class ScalePlan:
    """How to hold, search and build ``faces`` faces, each node within a memory budget."""

    faces: int
    dim: int
    memory_budget_bytes: int          # per node
    shards: int                       # index shards, one per node; a query asks them all
    faces_per_shard: int
    factory: str                      # each shard's FAISS index (choose_index within budget)
    nprobe: int
    k_factor: int
    memory_per_shard_bytes: int       # choose_index's estimate for one shard
    memory_total_bytes: int
    reason: str                       # why this kind and this many shards
    expected_recall: float            # recall@10 measured for this kind at the size below
    expected_p50_ms: float            # that size's p50, scaled by the vectors a query scans
    measured: dict                    # the measurement both rest on (faces, factory, figures)
    extrapolated: bool                # True when the shard size is not the measured size
    image_size: int
    images_per_second_per_worker: float  # measured end to end on one whole machine
    worker: str                       # that machine
    embedding_hours: float            # embedding every face on one worker
    train_hours: float                # training the index once (on a sample), extrapolated
    add_hours_per_shard: float        # filling one shard (shards fill in parallel)
    hours: float | None               # the wall-clock goal, if any
    workers: int                      # embedding workers to meet ``hours`` (1 without a goal)
    nodes: int                        # machines: a shard each, and the workers (the same ones)
    build_hours: float                # wall clock with ``workers``: embed + train + fill
    sources: dict                     # files the figures come from

    def to_json(self) -> dict:
        return asdict(self)


def plan_scale(faces: int, *, memory_budget_bytes: int, dim: int = 2048, image_size: int = 64,
               hours: float | None = None) -> ScalePlan:
    """Plan ``faces`` faces of ``dim`` dims with at most ``memory_budget_bytes`` of index per
    node, embedded at ``image_size`` px, built within ``hours`` if given.

    The index is ``choose_index``'s within the budget, on as few shards as give a kind whose
    recall was measured (exact, IVF-Flat, or PQ re-ranked from SQ8/SQ6 copies; PQ codes alone
    were never measured). Recall and latency are those of the measured size nearest a shard's.

    >>> plan_scale(100_000_000, memory_budget_bytes=64 * 2**30, hours=24).workers
    8
    """
    if faces < 1:
        raise UsageError(f"faces must be at least 1, got {faces}")
    if hours is not None and hours <= 0:
        raise UsageError(f"hours must be positive, got {hours}")
    costs = measured_costs()
    rows = costs["index"]["rows"]
    measured_kinds = {_kind(row["factory"]) for row in rows}
    shards, index_plan = _shard(faces, dim, memory_budget_bytes, measured_kinds)
    per_shard = math.ceil(faces / shards)
    row, p50 = _measured_row(rows, index_plan, per_shard)
    # k-means on 48 vectors per list costs ~ nlist^2; adding a vector ~ constant (its coarse
    # assignment grows with nlist too: optimistic there).
    nlist, nlist_measured = _nlist(index_plan.factory), _nlist(row["factory"])
    train_s = row["train_s"] * ((nlist / nlist_measured) ** 2 if nlist and nlist_measured else 1)
    add_s = row["add_s"] / row["faces"] * per_shard

    speed = _embedding_speed(costs, image_size)
    embedding_hours = faces / speed["images_per_second"] / 3600
    fixed_hours = (train_s + add_s) / 3600
    workers = 1
    if hours is not None:
        if hours <= fixed_hours:
            raise UsageError(f"{hours} h is too short: training and filling the index alone "
                             f"take {fixed_hours:.1f} h; allow more hours or more memory")
        workers = max(1, math.ceil(embedding_hours / (hours - fixed_hours)))
    reason = (f"{shards} shards of {per_shard:,} faces, the fewest that each fit "
              f"{_size(memory_budget_bytes)} as a measured index kind; " if shards > 1 else "")
    reason += index_plan.reason
    if _kind(row["factory"]) != _kind(index_plan.factory):
        reason += f"; {_kind(index_plan.factory)} was not measured: figures of {row['factory']}"
    return ScalePlan(
        faces=faces, dim=dim, memory_budget_bytes=memory_budget_bytes, shards=shards,
        faces_per_shard=per_shard, factory=index_plan.factory, nprobe=index_plan.nprobe,
        k_factor=index_plan.k_factor, memory_per_shard_bytes=index_plan.memory_bytes,
        memory_total_bytes=index_plan.memory_bytes * shards,
        reason=reason, expected_recall=row["recall_at_10"],
        expected_p50_ms=round(p50, 2), measured=row, extrapolated=row["faces"] != per_shard,
        image_size=image_size, images_per_second_per_worker=speed["images_per_second"],
        worker=costs["embedding"]["machine"], embedding_hours=round(embedding_hours, 1),
        train_hours=round(train_s / 3600, 2), add_hours_per_shard=round(add_s / 3600, 2),
        hours=hours, workers=workers, nodes=max(shards, workers),
        build_hours=round(embedding_hours / workers + fixed_hours, 1),
        sources={"index": f"{costs['index']['source']} ({costs['index']['machine']})",
                 "embedding": f"{costs['embedding']['source']} ({costs['embedding']['what']}; "
                              f"{costs['embedding']['machine']})"})


@lru_cache(maxsize=1)
def measured_costs() -> dict:
    """The figures plans rest on (written by ``python benchmarks/plan_costs.py``)."""
    text = resources.files("facerank.scale").joinpath("measured_costs.json").read_text()
    return json.loads(text)


def _measured_row(rows: list[dict], plan, per_shard: int) -> tuple[dict, float]:
    """(the measurement nearest in size of the plan's kind, its p50 scaled to ``per_shard``)."""
    kind = _kind(plan.factory)
    kind = _MEASURED_AS.get(kind, kind)
    same_kind = [row for row in rows if _kind(row["factory"]) == kind]
    row = min(same_kind, key=lambda r: (abs(math.log(per_shard / r["faces"])), -r["faces"]))
    # A query scans nprobe/nlist of the lists (plus the coarse step and the re-ranking, which
    # grow more slowly): scaling the whole p50 by the vectors scanned errs on the slow side.
    scanned = per_shard * _fraction(plan.factory, plan.nprobe)
    scanned_measured = row["faces"] * _fraction(row["factory"], row["nprobe"])
    return row, row["p50_ms"] * scanned / scanned_measured


def _shard(faces: int, dim: int, budget: int, measured_kinds: set[str]):
    """(shards, each shard's IndexPlan): the fewest shards whose index is of a measured kind."""
    for shards in range(1, MAX_SHARDS + 1):
        try:
            plan = choose_index(math.ceil(faces / shards), dim, memory_budget_bytes=budget)
        except ValueError:
            continue
        kind = _kind(plan.factory)
        if _MEASURED_AS.get(kind, kind) in measured_kinds:
            return shards, plan
        if math.ceil(faces / shards) == 1:
            break
    raise UsageError(f"no split of {faces:,} faces fits {_size(budget)} per node; raise the "
                     "memory budget")


def _embedding_speed(costs: dict, image_size: int) -> dict:
    rows = {row["image_size"]: row for row in costs["embedding"]["rows"]}
    if image_size not in rows:
        raise UsageError(f"no measured embedding speed at {image_size} px; measured: "
                         f"{', '.join(str(size) for size in sorted(rows))}")
    return rows[image_size]


#: Kinds never measured that are at least as precise as a measured one, whose figures they take:
#: re-ranking from float16 copies is finer than from 8-bit ones (a lower bound on recall).
_MEASURED_AS = {"PCAR,IVF,PQnp,Refine(SQfp16)": "PCAR,IVF,PQnp,Refine(SQ8)"}


def _kind(factory: str) -> str:
    """The factory without its sizes: 'PCAR,IVF,PQnp,Refine(SQ6)'."""
    return re.sub(r"(PCAR|IVF|PQ)\d+", r"\1", factory)


def _nlist(factory: str) -> int:
    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else 0


def _fraction(factory: str, nprobe: int) -> float:
    nlist = _nlist(factory)
    return min(1.0, nprobe / nlist) if nlist and nprobe else 1.0


def _size(size: int) -> str:
    from facerank.units import format_size

    return format_size(size)
