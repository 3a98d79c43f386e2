"""The FAISS index: vectors with stable integer ids, exact L2 search for small galleries.

A thin layer so that the rest of facerank never touches FAISS types: numpy in, numpy out.
Distances are Euclidean (FAISS's L2 indexes report squared distances; we take the root).

``choose_index(count, dim)`` picks an index for a gallery's size and a memory budget, in the
spirit of autofaiss: exact ``Flat`` while a query is cheap, ``IVF…,Flat`` while the raw vectors
fit the budget, and PCA + ``IVF…,PQ`` whose candidates are re-ranked from scalar-quantised full
vectors beyond that. The figures behind each threshold are in
``benchmarks/results/index_scale.md`` (``python benchmarks/index_scale.py``).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np

from facerank import atomic
from facerank.errors import StoreError, UsageError

#: FAISS index-factory string used when none is given: exact search, no training, no surprises.
DEFAULT_FACTORY = "Flat"

#: Exact search while a query scans at most this many floats (count x dim). A Flat query costs
#: ~0.4-0.9 ns per float on the 2-core AVX-512 box (index_scale.md: 8.6 ms at 10k x 2048 on one
#: thread; ~93 ms at 100k), so up to 2**24 floats (8,192 faces at 2048-d) an exact answer takes
#: under ~10 ms and needs no training. Above it, IVF128 visiting 8 lists answered in 0.7 ms
#: with recall@10 0.99 at 10k.
EXACT_MAX_FLOATS = 2**24

#: Vectors an IVF index collects (searched exactly meanwhile) before it trains: 48 per list.
#: FAISS's k-means wants at least 39 points per centroid and warns below that; 48 leaves room
#: without holding much more than needed in float32 while waiting.
TRAIN_PER_LIST = 48

#: Candidates fetched per wanted neighbour before re-ranking (k * K_FACTOR). On real facerank
#: embeddings at 50k (index_scale.md), PCA-256 + 32-byte PQ codes with 1/32 of the lists
#: visited gave the same recall@10 with k x 8 as with k x 16 (0.992 re-ranked from SQ8); x16 is
#: the margin for the denser neighbourhoods of a million faces, for ~0.5 ms more.
K_FACTOR = 16

#: PCA output for compressed plans, cut into 8-d sub-vectors of one byte each: 256 gives
#: 32-byte codes. facerank's avg_pool embeddings are non-negative and concentrated: 256
#: components held 96% of the variance of LFW embeddings (16 held 88%); the re-ranking on full
#: vectors repairs what PCA and PQ blur. (4-bit fast-scan PQ searched faster, but FAISS 1.15
#: loses vectors added to its lists after a removal, and facerank removes.)
PCA_DIM = 256

#: Re-ranking codecs from most to least precise, with bytes per dimension; the best one that
#: fits the budget is used. Re-ranking the exact top-160 of real 2048-d faces at 50k from these
#: codes kept recall@10 at 0.997 (SQ8), 0.979 (SQ6) and 0.948 (SQ4); keeping only the first 1024
#: PCA components instead gave 0.961, so the fine ranking needs every dimension.
REFINE_CODECS = (("SQfp16", 2.0), ("SQ8", 1.0), ("SQ6", 0.75), ("SQ4", 0.5))

#: Bookkeeping per vector: the int64 id plus the id -> position hash map of IDMap2 / an IVF
#: direct map (std::unordered_map: a 24-byte node, allocator overhead and a bucket pointer).
ID_BYTES = 56


@dataclass(frozen=True)
class IndexPlan:
    """An index for a gallery: a FAISS factory string and the search parameters that go with it.

    >>> choose_index(1_000_000, 2048)
    IndexPlan(factory='PCAR256,IVF4096,PQ32np,Refine(SQ6)', nprobe=128, k_factor=16, ...)
    """

    factory: str = DEFAULT_FACTORY  # FAISS index_factory string; ",Refine(X)" = re-rank from X
    nprobe: int = 0                 # IVF lists visited per query (0: not an IVF index)
    k_factor: int = 0               # re-ranking fetches k * k_factor candidates (0: none)
    ef_search: int = 0              # HNSW search breadth (user factories only: HNSW cannot remove)
    train_size: int = 0             # vectors searched exactly before the index trains (0: none)
    memory_bytes: int = 0           # estimated size of the index for the count it was chosen for
    reason: str = ""                # one line: why this plan

    @property
    def search_parameters(self) -> dict[str, int]:
        """The parameters as ``faiss.ParameterSpace`` names them, only those that apply."""
        named = {"nprobe": self.nprobe, "k_factor_rf": self.k_factor, "efSearch": self.ef_search}
        return {name: value for name, value in named.items() if value}

    @classmethod
    def for_factory(cls, factory: str) -> IndexPlan:
        """Default parameters for any factory string: what ``choose_index`` would pair with it.

        >>> IndexPlan.for_factory("IVF1024,Flat").nprobe
        32
        """
        base, refine = split_refine(factory)
        nlist = _nlist_of(base)
        trains = re.search(r"IVF|PQ|SQ|PCA|ITQ|RR|LSH|RQ|LSQ", factory) is not None
        # Enough vectors for FAISS to train without warnings: 48 per IVF list, 64 per PQ
        # centroid (256 per 8-bit sub-quantizer, 16 at 4 bits), a few thousand for the rest.
        pq_centroids = 16 if re.search(r"PQ\d+x4", base) else 256 if "PQ" in base else 0
        needed = max(TRAIN_PER_LIST * nlist, 64 * pq_centroids, 4096)
        return cls(factory=factory,
                   nprobe=_default_nprobe(nlist) if nlist else 0,
                   k_factor=K_FACTOR if refine else 0,
                   ef_search=64 if "HNSW" in base else 0,
                   train_size=needed if trains else 0,
                   reason="parameters derived from the factory string")


def choose_index(count: int, dim: int, *, memory_budget_bytes: int = 2 * 2**30) -> IndexPlan:
    """The index to use for ``count`` vectors of ``dim`` within ``memory_budget_bytes``.

    Exact while it is cheap; IVF-Flat while the float32 vectors fit the budget; beyond that,
    PCA + IVF-PQ candidates re-ranked from the most precise scalar-quantised copy that fits.
    HNSW is never chosen: it cannot remove vectors, and facerank removes people.

    >>> choose_index(400, 2048).factory
    'Flat'
    >>> choose_index(100_000, 2048).factory
    'IVF1024,Flat'
    """
    if count < 0:
        raise UsageError(f"count must be at least 0, got {count}")
    if dim <= 0:
        raise UsageError(f"dim must be positive, got {dim}")
    flat_bytes = count * (4 * dim + ID_BYTES)
    if count * dim <= EXACT_MAX_FLOATS and flat_bytes <= memory_budget_bytes:
        return replace(IndexPlan(), memory_bytes=flat_bytes,
                       reason=f"{count:,} x {dim}-d is at most {EXACT_MAX_FLOATS:,} floats: "
                              "exact search is fast enough and needs no training")
    nlist = _choose_nlist(count)
    while nlist > 16 and TRAIN_PER_LIST * nlist * (4 * dim + ID_BYTES) > memory_budget_bytes:
        nlist //= 2  # the vectors held exactly while waiting to train must fit the budget too
    ivf_bytes = flat_bytes + nlist * dim * 4
    if ivf_bytes <= memory_budget_bytes:
        plan = IndexPlan.for_factory(f"IVF{nlist},Flat")
        return replace(plan, memory_bytes=ivf_bytes,
                       reason=f"float32 vectors fit the budget ({_gib(ivf_bytes)} of "
                              f"{_gib(memory_budget_bytes)}): IVF over {nlist} lists, "
                              f"{plan.nprobe} visited, exact distances")
    reduced = min(PCA_DIM, dim - dim % 8) if dim >= 16 else dim
    m = max(1, reduced // 8)  # 8-d sub-vectors, one byte each
    transform = f"PCAR{reduced}," if reduced < dim else ""
    # Codes and ids, the coarse centroids, the PCA matrix, and the table of centroid x
    # sub-centroid terms FAISS precomputes to speed up IVF-PQ search (nlist x m x 256 floats).
    fixed = (count * (m + 8) + nlist * reduced * 4 + dim * reduced * 4 + nlist * m * 256 * 4)
    options = [(f"{transform}IVF{nlist},PQ{m}np,Refine({codec})",
                fixed + int(count * dim * per_dim) + count * ID_BYTES,  # + the refine's id map
                (f"float32 vectors need {_gib(ivf_bytes)}, over the budget of "
                 f"{_gib(memory_budget_bytes)}: {m}-byte PQ codes find k x {K_FACTOR} "
                 f"candidates, re-ranked from {codec}")) for codec, per_dim in REFINE_CODECS]
    options.append((f"{transform}IVF{nlist},PQ{m}np", fixed,
                    (f"even 4-bit copies for re-ranking exceed {_gib(memory_budget_bytes)}: "
                     f"{m}-byte PQ codes alone, approximate distances, lower recall")))
    for factory, total, reason in options:
        plan = IndexPlan.for_factory(factory)
        # Until it trains, the index holds train_size float32 vectors: that must fit too.
        waiting = plan.train_size * (4 * dim + ID_BYTES)
        if max(total, waiting) <= memory_budget_bytes:
            return replace(plan, memory_bytes=total, reason=f"{reason} ({_gib(total)} in all)")
    needed = max(options[-1][1], IndexPlan.for_factory(options[-1][0]).train_size
                 * (4 * dim + ID_BYTES))
    raise UsageError(f"{count:,} vectors of {dim}-d need at least {_gib(needed)} even as "
                     f"{m}-byte codes; raise memory_budget_bytes (now "
                     f"{_gib(memory_budget_bytes)})")


class FaceIndex:
    """Vectors of one dimension under caller-chosen int64 ids; add, remove, search, save, load.

    With a factory that needs training (an IVF plan from ``choose_index``), vectors are kept
    and searched exactly until ``plan.train_size`` of them have arrived; then the index trains on
    them and moves them over. A gallery too small to train an IVF simply stays exact.

    >>> index = facerank.FaceIndex(dim=4)                  # exact (Flat) by default
    >>> index.add(np.array([7, 8]), np.eye(4, dtype="float32")[:2])
    >>> distances, ids = index.search(np.eye(4, dtype="float32")[:1], k=2)
    >>> ids.tolist(), float(distances[0, 0])              # each query's nearest first
    ([[7, 8]], 0.0)

    For a million 2048-d face prints: ``FaceIndex(dim=2048, plan=choose_index(1_000_000, 2048))``.
    """

    def __init__(self, dim: int, *, factory: str = DEFAULT_FACTORY, plan: IndexPlan | None = None):
        if dim <= 0:
            raise UsageError(f"dim must be positive, got {dim}")
        if plan is not None and factory not in (DEFAULT_FACTORY, plan.factory):
            raise UsageError(f"factory {factory!r} and plan.factory {plan.factory!r} disagree; "
                             "pass one of them")
        plan = plan or IndexPlan.for_factory(factory)
        _check_factory(dim, plan.factory)
        self.dim = dim
        self.factory = plan.factory
        self.plan = plan
        self._index = _with_ids(faiss.IndexFlatL2(dim))  # exact until trained
        self._built = not plan.train_size
        if self._built:
            self._index = self._empty_target()
            self._apply(plan.search_parameters)

    def __len__(self) -> int:
        return int(_base(self._index).ntotal)

    @property
    def is_built(self) -> bool:
        """False while vectors wait (searched exactly) for enough of them to train on."""
        return self._built

    @property
    def is_exact(self) -> bool:
        """True while searches are exact: a Flat plan, or vectors still waiting to train."""
        return isinstance(self._index, faiss.IndexIDMap2) and isinstance(
            faiss.downcast_index(self._index.index), faiss.IndexFlat)

    @property
    def ids(self) -> np.ndarray:
        index = self._index
        if isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.refine_index)
        if isinstance(index, faiss.IndexIDMap2):
            return faiss.vector_to_array(index.id_map).astype(np.int64)
        lists = faiss.extract_index_ivf(index).invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                 for i in range(lists.nlist) if lists.list_size(i)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    @property
    def parameters(self) -> dict[str, int]:
        """The search parameters in force (FAISS names), read from the index itself."""
        if not self._built:
            return dict(self.plan.search_parameters)
        found = {}
        ivf = faiss.try_extract_index_ivf(_base(self._index))
        if ivf is not None:
            found["nprobe"] = int(ivf.nprobe)
        if isinstance(self._index, faiss.IndexRefine):
            found["k_factor_rf"] = round(self._index.k_factor)
        inner = _base(self._index)
        inner = faiss.downcast_index(inner.index) if isinstance(inner, faiss.IndexIDMap2) else inner
        if isinstance(inner, faiss.IndexHNSW):
            found["efSearch"] = int(inner.hnsw.efSearch)
        return found

    def set_search_parameters(self, *, nprobe: int | None = None, k_factor: int | None = None,
                              ef_search: int | None = None) -> None:
        """Change how hard searches look; saved with the index.

        >>> index.set_search_parameters(nprobe=64)
        """
        changes = {name: value for name, value in
                   (("nprobe", nprobe), ("k_factor", k_factor), ("ef_search", ef_search))
                   if value is not None}
        for name, value in changes.items():
            if value < 1:
                raise UsageError(f"{name} must be at least 1, got {value}")
        if self._built:
            self._apply(replace(IndexPlan(), **changes).search_parameters)
        self.plan = replace(self.plan, **changes)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = self._check(vectors)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(ids) == 0:
            return
        if not self._built and len(self) + len(ids) >= self.plan.train_size:
            # Enough now: train on everything held so far (these included) and move it over.
            self._index.add_with_ids(vectors, ids)
            self._train_and_move(self._index.index.reconstruct_n(0, len(self)), is_held=True)
            return
        _add(self._index, ids, vectors)

    def train(self, sample: np.ndarray) -> None:
        """Train the planned index on ``sample`` now, instead of on the first vectors added.

        Useful when vectors arrive in an order that is not representative (one person after
        another): pass a random sample of at least ``plan.train_size`` vectors. Vectors added so
        far move over. Nothing to do for plans that need no training.

        >>> index = FaceIndex(2048, plan=choose_index(1_000_000, 2048))
        >>> index.train(vectors[rng.choice(len(vectors), index.plan.train_size, replace=False)])
        """
        if self._built:
            if self.plan.train_size:
                raise ValueError("this index is already trained; make a new FaceIndex to retrain")
            return
        sample = self._check(sample)
        if len(sample) < self.plan.train_size:
            raise UsageError(f"{self.factory} needs at least {self.plan.train_size} training "
                             f"vectors, got {len(sample)}; until then it searches exactly")
        self._train_and_move(sample)

    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors by id; returns how many were removed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        try:
            return _remove(self._index, ids)
        except RuntimeError as error:
            raise UsageError(f"this index ({self.factory}) cannot remove vectors ({error}); "
                             "rebuild it with a factory that can, such as "
                             "choose_index(count, dim).factory") from None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest ``k`` vectors per query: (Euclidean distances, ids), -1 ids where fewer exist."""
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        queries = self._check(queries)
        k = min(k, max(len(self), 1))
        if isinstance(self._index, faiss.IndexRefine):
            squared, ids = _rerank(self._index, queries, k)
        else:
            squared, ids = self._index.search(queries, k)
        distances = np.sqrt(np.maximum(squared, 0.0))
        distances[ids < 0] = np.inf
        return distances, ids

    def reconstruct(self, record_id: int) -> np.ndarray:
        """The stored vector of ``record_id`` (decoded from codes where the index compresses)."""
        index = self._index
        if isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.refine_index)
        return index.reconstruct(int(record_id))

    def copy(self) -> "FaceIndex":
        """An independent copy: changing one leaves the other as it was."""
        twin = copy.copy(self)
        try:
            twin._index = faiss.clone_index(self._index)
        except RuntimeError:  # a combination FAISS's cloner does not know: through bytes
            twin._index = faiss.deserialize_index(faiss.serialize_index(self._index))
        return twin

    def merge(self, shards: list["FaceIndex"]) -> None:
        """Move the vectors of ``shards`` into this index: indexes of the same trained kind,
        filled separately (on other machines, say) from a copy of this one. Lists are appended
        in the order given, so merging shards of consecutive id ranges answers exactly as adding
        their vectors here one after another would. The shards are emptied.

        >>> shard = index.copy(); shard.add(ids, vectors); index.merge([shard])
        """
        for shard in shards:
            if shard.dim != self.dim or shard.factory != self.factory or \
                    shard.is_built != self.is_built:
                raise ValueError(f"cannot merge a {shard.factory} index ({shard.dim}-d) into a "
                                 f"{self.factory} index ({self.dim}-d)")
        if len(self) == 0:
            # A factory-made Flat is an IndexFlat, a read one an IndexFlatL2, and FAISS merges
            # only the same class: start from the serialised form, as the shards did.
            self._index = faiss.deserialize_index(faiss.serialize_index(self._index))
        mine = _parts(self._index)
        for position, part in enumerate(mine):
            ivf = faiss.try_extract_index_ivf(part)
            if ivf is None:  # vectors by position under IDMap2: FAISS appends codes and ids
                for shard in shards:
                    faiss.downcast_index(part).merge_from(_parts(shard._index)[position], 0)
                continue
            # FAISS merges inverted lists only without an id -> list map; rebuild it after.
            kind = ivf.direct_map.type
            ivf.set_direct_map_type(faiss.DirectMap.NoMap)
            for shard in shards:
                other = faiss.extract_index_ivf(_parts(shard._index)[position])
                other.set_direct_map_type(faiss.DirectMap.NoMap)
                ivf.merge_from(other, 0)
            ivf.set_direct_map_type(kind)
            part.ntotal = ivf.ntotal  # a transform in front (PCA) keeps its own count
        if isinstance(self._index, faiss.IndexRefine):
            self._index.ntotal = self._index.base_index.ntotal

    def to_bytes(self) -> bytes:
        """The index as FAISS serialises it: to send to another process (``from_bytes``)."""
        return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, *, plan: IndexPlan) -> "FaceIndex":
        index = cls.__new__(cls)
        raw = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        index.dim, index.plan, index.factory, index._index = raw.d, plan, plan.factory, raw
        index._built = not (index.is_exact and plan.train_size)
        return index

    def save(self, path: str | Path) -> None:
        atomic.write_with(path, lambda temporary: faiss.write_index(self._index, str(temporary)))

    @classmethod
    def load(cls, path: str | Path, *, factory: str = DEFAULT_FACTORY,
             plan: IndexPlan | None = None) -> FaceIndex:
        """Read an index saved by ``save``.

        Search parameters are saved inside the FAISS file and kept; a ``plan`` given here is
        applied over them. ``factory``/``plan`` also say what an index that was still exact
        (waiting for training vectors) should become.
        """
        raw = faiss.read_index(str(path))  # already of its concrete class, and owning it
        if not isinstance(raw, (faiss.IndexIDMap2, faiss.IndexRefine)) and \
                faiss.try_extract_index_ivf(raw) is None:
            raise StoreError(f"{path} is a FAISS index without stable ids; rebuild it")
        index = cls.__new__(cls)
        index.dim = raw.d
        index.plan = plan or IndexPlan.for_factory(factory)
        index.factory = index.plan.factory
        index._index = raw
        index._built = not (index.is_exact and index.plan.train_size)
        if index._built and plan is not None:
            index._apply(plan.search_parameters)
        return index

    # -- internals -------------------------------------------------------------------------------

    def _empty_target(self) -> faiss.Index:
        base_factory, refine_factory = split_refine(self.factory)
        base = faiss.index_factory(self.dim, base_factory, faiss.METRIC_L2)
        ivf = faiss.try_extract_index_ivf(base)
        if ivf is None:
            # IDMap2 keeps the ids we choose over indexes that number vectors by position (and
            # shift them on removal, as IDMap2 expects). It must not wrap an IVF: IVF removal does
            # not shift positions, and IDMap2's id table would then point at the wrong vectors.
            base = _with_ids(base)
        elif not refine_factory:
            # IVF lists store our ids themselves; a hash map from id to list makes reconstruct
            # work and removal cheap. (With re-ranking, the refine copy reconstructs instead.)
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        if not refine_factory:
            return base
        refine = _with_ids(faiss.index_factory(self.dim, refine_factory, faiss.METRIC_L2))
        # IndexRefine is only the container that saves both halves and carries k_factor (so
        # ParameterSpace's "k_factor_rf" reaches it); we search it ourselves (``_rerank``) because
        # its own search wants positions, not ids.
        container = faiss.IndexRefine(base, refine)
        container.own_fields = container.own_refine_index = True
        base.this.disown()
        refine.this.disown()
        return container

    def _train_and_move(self, sample: np.ndarray, *, is_held: bool = False) -> None:
        """Train the planned index on ``sample``, then move the vectors held exactly into it."""
        ids = self.ids
        held = sample if is_held else (
            self._index.index.reconstruct_n(0, len(ids)) if len(ids) else None)
        self._index = None  # free the exact copy before training allocates
        try:
            target = self._empty_target()
            for part in _parts(target):
                if not part.is_trained:
                    part.train(sample)
        except BaseException:
            self._index = _with_ids(faiss.IndexFlatL2(self.dim))  # as it was: exact
            if held is not None:
                self._index.add_with_ids(held, ids)
            raise
        if isinstance(target, faiss.IndexRefine):
            target.is_trained = True
        self._index = target
        self._built = True
        self._apply(self.plan.search_parameters)
        if held is not None:
            _add(self._index, ids, held)

    def _apply(self, parameters: dict[str, int]) -> None:
        space = faiss.ParameterSpace()
        for name, value in parameters.items():
            try:
                space.set_index_parameter(self._index, name, float(value))
            except RuntimeError:
                raise UsageError(f"{name} does not apply to this index ({self.factory})") from None

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise UsageError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        return vectors


def split_refine(factory: str) -> tuple[str, str]:
    """("PCAR256,IVF4096,PQ32np", "SQ8") from "PCAR256,IVF4096,PQ32np,Refine(SQ8)"."""
    match = re.fullmatch(r"(.+),(?:RFlat|Refine\((.+)\))", factory.strip())
    if not match:
        return factory, ""
    return match.group(1), match.group(2) or "Flat"


def _check_factory(dim: int, factory: str) -> None:
    for part in split_refine(factory):
        if part:
            try:
                faiss.index_factory(dim, part, faiss.METRIC_L2)
            except RuntimeError:
                raise UsageError(f"{factory!r} is not a FAISS index factory string for {dim}-d "
                                 "vectors; e.g. 'Flat', 'IVF1024,Flat' or "
                                 "choose_index(count, dim).factory") from None


def _nlist_of(factory: str) -> int:
    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else 0


def _choose_nlist(count: int) -> int:
    # FAISS's guideline is 4*sqrt(n) to 16*sqrt(n) lists; the low end keeps training cheap and
    # the coarse search small. A power of two, and never more than the vectors can train.
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(max(count, 1)), 16)))
    while nlist > 16 and nlist * TRAIN_PER_LIST > count:
        nlist //= 2
    return nlist


def _default_nprobe(nlist: int) -> int:
    # Measured on facerank embeddings of LFW (index_scale.md): visiting 1/32 of the lists gave
    # recall@10 0.99 at 50k (IVF1024, 32 lists; 16 lists: 0.976), and 8 of 128 lists 0.984 at
    # 10k; fewer than 8 lists lose the neighbours that sit across a cell border.
    return max(8, nlist // 32)


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**29 else f"{size / 2**20:.1f} MiB"


def _with_ids(index: faiss.Index) -> faiss.IndexIDMap2:
    """``index`` under IDMap2, which then owns it (and frees it with itself)."""
    wrapped = faiss.IndexIDMap2(index)
    wrapped.own_fields = True
    index.this.disown()
    return wrapped


def _base(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.base_index) if isinstance(index, faiss.IndexRefine) else index


def _parts(index: faiss.Index) -> list[faiss.Index]:
    if isinstance(index, faiss.IndexRefine):
        return [index.base_index, index.refine_index]
    return [index]


def _add(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> None:
    for part in _parts(index):
        part.add_with_ids(vectors, ids)
    if isinstance(index, faiss.IndexRefine):
        index.ntotal = index.base_index.ntotal


def _remove(index: faiss.Index, ids: np.ndarray) -> int:
    removed = []
    for part in _parts(index):
        ivf = faiss.try_extract_index_ivf(part)
        # A hash-map direct map removes only through an explicit array of ids.
        selector = (faiss.IDSelectorArray(ids) if ivf is not None
                    and ivf.direct_map.type == faiss.DirectMap.Hashtable
                    else faiss.IDSelectorBatch(ids))
        removed.append(int(part.remove_ids(selector)))
    if isinstance(index, faiss.IndexRefine):
        index.ntotal = index.base_index.ntotal
    return removed[0]


def _rerank(index: faiss.IndexRefine, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates from the compressed index, ordered by distances to their refine-copy vectors."""
    wanted = k * max(1, round(index.k_factor))
    _, candidates = index.base_index.search(queries, wanted)
    squared = np.full((len(queries), k), np.inf, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, found) in enumerate(zip(queries, candidates)):
        found = found[found >= 0]
        if not len(found):
            continue
        vectors = index.refine_index.reconstruct_batch(found)
        vectors -= query
        distances = np.einsum("ij,ij->i", vectors, vectors)
        order = np.argsort(distances, kind="stable")[:k]
        squared[row, :len(order)] = distances[order]
        ids[row, :len(order)] = found[order]
    return squared, ids
