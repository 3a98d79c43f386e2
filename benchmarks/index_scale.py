"""Which FAISS index at which gallery size: real facerank embeddings of LFW, grown to 1M faces.

    python benchmarks/index_scale.py            # full: 10k, 100k and 1M faces, 200 queries
    python benchmarks/index_scale.py --quick    # 10k and 50k faces, 100 queries, fewer images

Vectors are real: a facerank model (trained here on ORL from random initialisation unless
``--store`` names a trained store) embeds LFW face crops and augmented views of them (flip,
shift, zoom); they are cached under benchmarks/.cache/. Beyond the real embeddings, a gallery
grows by adding, to the mean embedding of a real person, the real deviation of another person's
image from that person's mean, then re-normalising (see the Markdown for the exact recipe).
Queries are held-out real images: none of their views is in a gallery or in a synthetic vector.

For each size and each candidate index: train and add time, index bytes, single-query p50/p95
(warm, after a warm-up), recall@10 against exact Flat search, top-1 agreement with exact search
and top-1 *identity* agreement (the nearest face names the same person as exact search's).
Search parameters are swept to show what each setting buys. Writes
benchmarks/results/index_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from machine import cpu_model

from facerank.search.index import FaceIndex, IndexPlan, _choose_nlist, choose_index

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
DEFAULT_ORL = HERE.parent.parent / "shared" / "data" / "orl"
DEFAULT_LFW = HERE.parent.parent / "shared" / "data" / "lfw"
K = 10
BLOCK = 65_536        # synthetic vectors are drawn in fixed blocks, so any pass sees the same ones
HNSW_MAX = 100_000    # HNSW is a reference only (it cannot remove); past this it builds for long

# LFW images are 250 x 250 with the face in the middle; ORL faces (what the model learnt) fill a
# 92 x 112 frame from the top of the head to the chin. This box frames LFW faces the same way.
FACE_BOX = (68, 55, 182, 195)
# Augmented views of each image, as (name, dx, dy, zoom, flip, description): realistic
# variations of a photo that a gallery of many pictures per person holds.
VIEWS = [("face", 0, 0, 1.0, False, "the face crop"),
         ("flip", 0, 0, 1.0, True, "mirrored"),
         ("shift", 8, 6, 1.0, False, "the crop shifted by (8, 6) px"),
         ("zoom-out", -4, 0, 1.15, True, "a 15% wider crop shifted 4 px left, mirrored")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k and 50k faces, a subset of LFW")
    parser.add_argument("--sizes", type=int, nargs="+", help="gallery sizes (default by mode)")
    parser.add_argument("--store", type=Path, help="a trained facerank store to embed with")
    parser.add_argument("--orl", type=Path, default=DEFAULT_ORL)
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    parser.add_argument("--epochs", type=int, default=12, help="training epochs without --store")
    parser.add_argument("--queries", type=int, help="held-out query images (default by mode)")
    parser.add_argument("--threads", type=int, help="FAISS/torch threads (default: all cores; "
                                                    "1 with --quick)")
    parser.add_argument("--candidates", nargs="+", help="only these candidate names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "index_scale")
    args = parser.parse_args()
    quick = args.quick
    sizes = args.sizes or ([10_000, 50_000] if quick else [10_000, 100_000, 1_000_000])
    n_queries = args.queries or (100 if quick else 200)
    threads = args.threads or (1 if quick else os.cpu_count())
    faiss.omp_set_num_threads(threads)
    warnings.simplefilter("ignore", UserWarning)
    started = time.perf_counter()

    model, model_info = load_model(args, threads)
    images = lfw_images(args.lfw, limit=1_200 if quick else None, seed=args.seed)
    views = VIEWS[:2] if quick else VIEWS
    pool = real_embeddings(model, model_info, images, views)
    del model
    population = Population(pool, n_queries=n_queries, seed=args.seed)
    print(f"real pool: {len(pool.vectors):,} embeddings of {len(images):,} LFW images "
          f"({len(set(pool.person.tolist())):,} people) x {len(views)} views; "
          f"{len(population.queries)} held-out queries", flush=True)

    results = {"machine": machine(threads), "mode": "quick" if quick else "full", "k": K,
               "model": model_info, "real": {
                   "lfw_images": len(images), "views": [v[0] for v in views],
                   "view_descriptions": [v[5] for v in views],
                   "embeddings": len(pool.vectors),
                   "people": len(set(pool.person.tolist())),
                   "queries": len(population.queries),
                   "base_real_embeddings": int(population.n_real)},
               "sizes": []}
    results["realism"] = realism(population, min(max(sizes), 100_000), args.seed)
    for size in sizes:
        results["sizes"].append(run_size(population, size, args.candidates, quick))
        write(results, args.out)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    write(results, args.out)
    print((args.out.with_suffix(".md")).read_text())


# -- real embeddings -----------------------------------------------------------------------------

def load_model(args, threads: int):
    import torch

    from facerank.model.torch_model import FaceModel
    from facerank.training.loop import train
    from facerank.training.recipes import preset

    torch.set_num_threads(threads)
    folder = args.store or CACHE / "orl-store"
    info = {"store": str(folder)}
    if not (folder / "model.json").exists():
        if args.store:
            raise SystemExit(f"no model in {folder}; train one with `facerank train GALLERY "
                             f"--store {folder}`")
        print(f"training a small model on ORL ({args.epochs} epochs, 64 px) into {folder}",
              flush=True)
        began = time.perf_counter()
        result = train(args.orl, folder, preset("scratch", epochs=args.epochs, image_size=64),
                       weights="none")
        info.update(trained_here=True, epochs=args.epochs, train_seconds=round(
            time.perf_counter() - began, 1), held_out_accuracy=result.test_accuracy)
    model = FaceModel.load(folder)
    history = folder / "train" / "history.json"
    if history.exists() and "held_out_accuracy" not in info:
        saved = json.loads(history.read_text())
        info.update(epochs=len(saved.get("history", [])),
                    held_out_accuracy=saved.get("test_accuracy"))
    info.update(fingerprint=model.config.fingerprint[:16], image_size=model.config.image_size,
                people=len(model.config.people), weights=model.config.weights_origin)
    return model, info


def lfw_images(root: Path, *, limit: int | None, seed: int) -> list[tuple[Path, str]]:
    """LFW images as (path, person); with ``limit``, whole people drawn at random until reached:
    three quarters of the images from people with several photos (queries come from them),
    the rest from people with one, as in LFW itself."""
    people = sorted(p for p in (root / "images").iterdir() if p.is_dir())
    if not people:
        raise SystemExit(f"no LFW images under {root / 'images'}; pass --lfw")
    files = {person: sorted(person.glob("*.jpg")) for person in people}
    if limit:
        rng = np.random.default_rng(seed)
        chosen, count = [], 0
        for group, share in (([p for p in people if len(files[p]) >= 2], 0.75),
                             ([p for p in people if len(files[p]) == 1], 1.0)):
            for i in rng.permutation(len(group)):
                if count + len(files[group[i]]) <= limit * share:
                    chosen.append(group[i])
                    count += len(files[group[i]])
        people = sorted(chosen)
    return [(path, person.name) for person in people for path in files[person]]


def view(path: Path, spec):
    """One augmented view of an LFW image, as an RGB PIL image."""
    from PIL import Image, ImageOps

    _, dx, dy, zoom, flip, _ = spec
    left, top, right, bottom = FACE_BOX
    cx, cy = (left + right) / 2 + dx, (top + bottom) / 2 + dy
    w, h = (right - left) * zoom / 2, (bottom - top) * zoom / 2
    with Image.open(path) as image:
        # The model learnt ORL's greyscale faces: LFW goes in greyscale too.
        face = ImageOps.grayscale(image.crop((round(cx - w), round(cy - h), round(cx + w),
                                              round(cy + h))))
    if flip:
        face = ImageOps.mirror(face)
    return face.convert("RGB")


@dataclass
class Pool:
    vectors: np.ndarray   # (n, dim) float32, unit length
    person: np.ndarray    # (n,) int32 person index
    image: np.ndarray     # (n,) int32 image index
    view: np.ndarray      # (n,) int8 view index


def real_embeddings(model, model_info: dict, images, views) -> Pool:
    """Embeddings of every image x view, cached as .npy under benchmarks/.cache/."""
    key = f"lfw-{model_info['fingerprint']}-{len(images)}x{len(views)}"
    files = {name: CACHE / f"{key}-{name}.npy" for name in ("vectors", "labels")}
    people = sorted({person for _, person in images})
    number = {person: i for i, person in enumerate(people)}
    if all(f.exists() for f in files.values()):
        vectors, labels = np.load(files["vectors"]), np.load(files["labels"])
        print(f"real embeddings from {files['vectors']}", flush=True)
    else:
        CACHE.mkdir(parents=True, exist_ok=True)
        began, chunks, labels = time.perf_counter(), [], []
        batch = 64
        todo = [(i, v) for i in range(len(images)) for v in range(len(views))]
        for start in range(0, len(todo), batch):
            part = todo[start:start + batch]
            chunks.append(model.embed([view(images[i][0], views[v]) for i, v in part],
                                      batch_size=batch))
            labels += [(number[images[i][1]], i, v) for i, v in part]
            if (start // batch) % 50 == 0:
                print(f"  embedded {start + len(part):,}/{len(todo):,} "
                      f"({time.perf_counter() - began:.0f} s)", flush=True)
        vectors, labels = np.concatenate(chunks), np.array(labels, dtype=np.int32)
        np.save(files["vectors"], vectors)
        np.save(files["labels"], labels)
        model_info["embed_seconds"] = round(time.perf_counter() - began, 1)
        model_info["embed_images_per_second"] = round(len(todo) / (time.perf_counter() - began), 1)
    return Pool(vectors.astype(np.float32), labels[:, 0], labels[:, 1],
                labels[:, 2].astype(np.int8))


# -- galleries of any size -----------------------------------------------------------------------

class Population:
    """Held-out queries, and galleries of any size: real embeddings first, then synthetic ones.

    A synthetic face of person p is ``normalise(mean_p + s * (e - mean_q))``: p's mean
    embedding (over all of p's real views in the gallery) plus the real deviation of one view
    ``e`` of another person q (who has at least two images) from q's mean, scaled by s drawn
    uniformly from [0.8, 1.2]. Real within-person variation, moved onto another identity; p is
    drawn like a real view is, so people with many photos get many synthetic ones too.
    """

    def __init__(self, pool: Pool, *, n_queries: int, seed: int):
        rng = np.random.default_rng(seed)
        images_of = {}
        for person, image in zip(pool.person.tolist(), pool.image.tolist()):
            images_of.setdefault(person, set()).add(image)
        several = sorted(p for p, imgs in images_of.items() if len(imgs) >= 2)
        if len(several) < n_queries:
            raise SystemExit(f"only {len(several)} people have two images; ask fewer --queries")
        # One query image from each of n_queries people who keep other images in the gallery.
        query_people = rng.choice(several, n_queries, replace=False)
        query_images = {int(rng.choice(sorted(images_of[p]))) for p in query_people}
        is_query = np.isin(pool.image, list(query_images))
        first_view = is_query & (pool.view == 0)
        self.queries = pool.vectors[first_view]
        self.query_person = pool.person[first_view]

        keep = ~is_query
        order = rng.permutation(int(keep.sum()))
        self.real = pool.vectors[keep][order]
        self.real_person = pool.person[keep][order]
        self.n_real = len(self.real)
        n_people = int(pool.person.max()) + 1
        sums = np.zeros((n_people, self.real.shape[1]), np.float64)
        np.add.at(sums, self.real_person, self.real)
        counts = np.bincount(self.real_person, minlength=n_people)
        self.means = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        real_image = pool.image[keep][order]
        images_left = {}
        for person, image in zip(self.real_person.tolist(), real_image.tolist()):
            images_left.setdefault(person, set()).add(image)
        donors = np.isin(self.real_person, [p for p, s in images_left.items() if len(s) >= 2])
        self.donor = np.flatnonzero(donors)
        self.seed = seed

    def blocks(self, size: int):
        """(start, vectors, person) for positions [0, size) in blocks; the same every pass."""
        for start in range(0, size, BLOCK):
            stop = min(start + BLOCK, size)
            yield start, *self._block(start, stop)

    def _block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        parts, people = [], []
        if start < self.n_real:
            parts.append(self.real[start:min(stop, self.n_real)])
            people.append(self.real_person[start:min(stop, self.n_real)])
        first = max(start, self.n_real)
        if stop > first:
            rng = np.random.default_rng([self.seed, first])
            m = stop - first
            person = self.real_person[rng.integers(0, self.n_real, m)]
            donor = self.donor[rng.integers(0, len(self.donor), m)]
            for _ in range(20):  # the deviation must come from someone else
                clash = self.real_person[donor] == person
                if not clash.any():
                    break
                donor[clash] = self.donor[rng.integers(0, len(self.donor), int(clash.sum()))]
            # A random scale of the deviation keeps every synthetic face distinct: exact
            # duplicates would make "the" nearest neighbour ambiguous.
            scale = rng.uniform(0.8, 1.2, (m, 1)).astype(np.float32)
            x = self.means[person] + scale * (self.real[donor]
                                              - self.means[self.real_person[donor]])
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            parts.append(x.astype(np.float32))
            people.append(person)
        return np.concatenate(parts), np.concatenate(people).astype(np.int32)

    def sample(self, size: int, count: int, seed: int) -> np.ndarray:
        """``count`` vectors drawn uniformly from the gallery of ``size`` (to train on)."""
        chosen = np.sort(np.random.default_rng([seed, size]).choice(size, min(count, size),
                                                                     replace=False))
        picked = []
        for start, vectors, _ in self.blocks(size):
            inside = chosen[(chosen >= start) & (chosen < start + len(vectors))]
            picked.append(vectors[inside - start])
        return np.concatenate(picked)


def realism(population: Population, size: int, seed: int) -> dict:
    """How the synthetic faces compare with the real ones, in a gallery of ``size``."""
    base = np.concatenate([vectors for _, vectors, _ in population.blocks(size)])
    persons = np.concatenate([person for *_, person in population.blocks(size)])
    rng = np.random.default_rng(seed)
    directions = population.means / np.maximum(
        np.linalg.norm(population.means, axis=1, keepdims=True), 1e-12)
    stats = {"gallery": size}
    for kind, rows in (("real", np.arange(min(size, population.n_real))),
                       ("synthetic", np.arange(population.n_real, size))):
        if not len(rows):
            continue
        rows = rng.choice(rows, min(500, len(rows)), replace=False)
        x, p = base[rows], persons[rows]
        squared, _ = faiss.knn(x, base, 2)  # the first is the face itself
        stats[kind] = {
            "median_distance_to_own_mean": round(float(np.median(
                np.linalg.norm(x - population.means[p], axis=1))), 4),
            "median_nearest_neighbour_distance": round(float(np.median(
                np.sqrt(np.maximum(squared[:, 1], 0)))), 4),
            "nearest_mean_is_own_person": round(float(np.mean(
                np.argmax(x @ directions.T, axis=1) == p)), 4)}
    return stats


def exact_neighbours(population: Population, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-K ids of the queries over the gallery (batched, block by block) and persons."""
    best_d = np.full((len(population.queries), K), np.inf, np.float32)
    best_i = np.full((len(population.queries), K), -1, np.int64)
    persons = np.empty(size, np.int32)
    for start, vectors, person in population.blocks(size):
        persons[start:start + len(vectors)] = person
        d, i = faiss.knn(population.queries, vectors, K)
        d, i = np.hstack([best_d, d]), np.hstack([best_i, i + start])
        order = np.argsort(d, axis=1, kind="stable")[:, :K]
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return best_i, persons


# -- candidates ----------------------------------------------------------------------------------

def candidates(size: int, dim: int, only: list[str] | None, quick: bool
               ) -> list[tuple[str, IndexPlan]]:
    nlist = _choose_nlist(size)
    chosen = choose_index(size, dim)
    listed = [("Flat", IndexPlan()),
              ("IVF-Flat", IndexPlan.for_factory(f"IVF{nlist},Flat")),
              ("HNSW32", IndexPlan.for_factory("HNSW32")),
              ("PCA256+IVF-PQ32+SQ8", IndexPlan.for_factory(
                  f"PCAR256,IVF{nlist},PQ32np,Refine(SQ8)")),
              # What 1M faces get in 2 GiB: measured at every size to see what 6 bits cost.
              ("PCA256+IVF-PQ32+SQ6", IndexPlan.for_factory(
                  f"PCAR256,IVF{nlist},PQ32np,Refine(SQ6)")),
              # Only on request: at 50k it trained in 750 s against 80 s for PCA, same recall.
              ("OPQ32+IVF-PQ32+SQ8", IndexPlan.for_factory(
                  f"OPQ32_256,IVF{nlist},PQ32np,Refine(SQ8)"))]
    listed = [c for c in listed if c[0] != "OPQ32+IVF-PQ32+SQ8" or (only and c[0] in only)]
    if size > (10_000 if quick else HNSW_MAX):
        listed = [c for c in listed if c[0] != "HNSW32"]
    # A plan that cannot train on this many vectors would just stay exact: not a candidate.
    listed = [c for c in listed if c[1].train_size <= size]
    if not any(plan.factory == chosen.factory for _, plan in listed):
        listed.append(("choose_index", chosen))
    else:  # measure the chosen one with the parameters (and estimate) choose_index gave it
        listed = [(name, chosen if plan.factory == chosen.factory else plan)
                  for name, plan in listed]
    if only:
        listed = [c for c in listed if c[0] in only or (c[1].factory == chosen.factory
                                                          and "choose_index" in only)]
    return listed


def sweep_settings(plan: IndexPlan) -> list[dict]:
    nlist = int(plan.factory.split("IVF")[1].split(",")[0]) if "IVF" in plan.factory else 0
    if plan.k_factor:
        return [{"nprobe": p, "k_factor": f} for p in (8, 16, 32, 64, 128, 256) if p <= nlist
                for f in (4, 8, 16, 32)]
    if nlist:
        return [{"nprobe": p} for p in (4, 8, 16, 32, 64, 128, 256) if p <= nlist]
    if plan.ef_search:
        return [{"ef_search": e} for e in (16, 32, 64, 128, 256)]
    return []


def run_size(population: Population, size: int, only, quick: bool) -> dict:
    dim = population.real.shape[1]
    began = time.perf_counter()
    truth, persons = exact_neighbours(population, size)
    truth_seconds = time.perf_counter() - began
    chosen = choose_index(size, dim)
    entry = {"size": size, "real": min(size, population.n_real),
             "synthetic": max(0, size - population.n_real),
             "ground_truth_seconds": round(truth_seconds, 2),
             "choose_index": {"factory": chosen.factory, **chosen.search_parameters,
                              "memory_bytes": chosen.memory_bytes, "reason": chosen.reason},
             "candidates": []}
    print(f"\n== {size:,} faces ({entry['real']:,} real, {entry['synthetic']:,} synthetic); "
          f"exact top-{K} in {truth_seconds:.1f} s; choose_index: {chosen.factory}", flush=True)
    for name, plan in candidates(size, dim, only, quick):
        row = measure_candidate(population, size, name, plan, truth, persons, quick)
        row["chosen"] = plan.factory == chosen.factory
        entry["candidates"].append(row)
        print(f"  {name:22s} {plan.factory:42s} p50 {row['p50_ms']:8.2f} ms  "
              f"recall@10 {row['recall_at_10']:.3f}  top-1 {row['top1_agreement']:.3f}  "
              f"identity {row['identity_agreement']:.3f}  {row['index_bytes'] / 2**20:8.1f} MiB"
              f"  train {row['train_s']:.1f} s  add {row['add_s']:.1f} s", flush=True)
    return entry


def measure_candidate(population, size, name, plan, truth, persons, quick) -> dict:
    dim = population.real.shape[1]
    index = FaceIndex(dim, plan=plan)
    train_s = 0.0
    if plan.train_size:
        sample = population.sample(size, plan.train_size, seed=population.seed)
        began = time.perf_counter()
        index.train(sample)  # a uniform sample, not the first vectors of the gallery
        train_s = time.perf_counter() - began
        del sample
    add_s = 0.0
    for start, vectors, _ in population.blocks(size):
        began = time.perf_counter()
        index.add(np.arange(start, start + len(vectors)), vectors)
        add_s += time.perf_counter() - began
    raw_floats = plan.factory in ("Flat", "HNSW32") or plan.factory.endswith(",Flat")
    if raw_floats:
        # Float32 vectors + ids (+ HNSW links): computed, to avoid copying gigabytes to count them.
        index_bytes = size * (4 * dim + 8) + (size * 32 * 2 * 4 if "HNSW" in plan.factory else 0)
    else:
        index_bytes = len(faiss.serialize_index(index._index))  # what `save` writes
    timed = 10 if (plan.factory == "Flat" and size > 200_000) else (50 if quick else 100)
    row = {"name": name, "factory": plan.factory, **index.parameters,
           "train_s": round(train_s, 2), "add_s": round(add_s, 2),
           "index_bytes": int(index_bytes), "index_bytes_computed": raw_floats,
           "plan_memory_estimate": plan.memory_bytes or None,
           **evaluate(index, population, truth, persons, timed)}
    row["sweep"] = []
    for setting in sweep_settings(plan):
        index.set_search_parameters(**setting)
        row["sweep"].append({**setting, **evaluate(index, population, truth, persons, 30)})
    del index
    return row


def evaluate(index: FaceIndex, population: Population, truth: np.ndarray, persons: np.ndarray,
             timed: int) -> dict:
    queries = population.queries
    _, found = index.search(queries, K)
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(found, truth)])
    top1 = found[:, 0]
    for q in queries[:3]:  # warm-up
        index.search(q[None], K)
    times = []
    for q in queries[:timed]:
        began = time.perf_counter()
        index.search(q[None], K)
        times.append((time.perf_counter() - began) * 1e3)
    return {"p50_ms": round(float(np.median(times)), 3),
            "p95_ms": round(float(np.percentile(times, 95)), 3), "timed_queries": len(times),
            "recall_at_10": round(float(recall), 4),
            "top1_agreement": round(float(np.mean(top1 == truth[:, 0])), 4),
            "identity_agreement": round(float(np.mean(persons[top1] == persons[truth[:, 0]])), 4),
            "identity_accuracy": round(float(np.mean(persons[top1] == population.query_person)),
                                       4)}


# -- report --------------------------------------------------------------------------------------

def machine(threads: int) -> str:
    return (f"{platform.machine()} {cpu_model()}, {os.cpu_count()} cores, "
            f"{threads} FAISS thread(s), "
            f"faiss {faiss.__version__}, numpy {np.__version__}")


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    real, model = results["real"], results["model"]
    vectors = (
        f"Vectors: {real['embeddings']:,} real facerank embeddings (2048-d, unit length) of "
        f"{real['lfw_images']:,} LFW images of {real['people']:,} people, each as "
        f"{len(real['views'])} views ({', '.join(real['views'])}), embedded by a ResNet50 "
        f"trained from random initialisation on ORL ({model.get('epochs', '?')} epochs, "
        f"{model.get('image_size')} px, held-out accuracy "
        f"{model.get('held_out_accuracy') or float('nan'):.0%}). LFW images are cropped to "
        f"the face (box {FACE_BOX} of 250 x 250), in greyscale as ORL; views: "
        f"{'; '.join(real['view_descriptions'])}.")
    galleries = (
        f"Queries: {real['queries']} held-out real images (their first view), one each from "
        f"{real['queries']} people who keep other images in the gallery; no view of a "
        "query image is in any gallery or synthetic vector. A gallery of n faces is the "
        f"first n of the {real['base_real_embeddings']:,} remaining real embeddings "
        "(shuffled), then synthetic faces: `normalise(mean_p + s·(e - mean_q))` — the mean "
        "embedding of a real person p (drawn like a real view, so people with many photos "
        "get many) plus the real deviation of a view e of another person q (with at least "
        "two images) from q's mean, scaled by s ~ U(0.8, 1.2) so that no two are equal. "
        "Each synthetic face is labelled p.")
    measures = (
        f"Measures: single-query latency (k={results['k']}, warm, after 3 warm-up queries; "
        "Flat above 200k: 10 queries), recall@10 and top-1 agreement against exact search, and "
        "*identity* agreement: the top-1 face names the same person as exact search's. "
        "Identity accuracy (top-1 person = query person) shows how well these embeddings "
        "identify at all. Index bytes: what `save` writes (float32 indexes: n·d·4 + ids, "
        "computed; in memory, id hash maps add ~56 bytes per face). Training uses a uniform "
        "sample of the gallery. Reproduce: `python benchmarks/index_scale.py` (`--quick`: "
        "10k and 50k).")
    lines = [f"# Index choice at scale ({results['mode']} run)", "",
             f"Machine: {results['machine']}.", "", vectors, "", galleries, "", measures, ""]
    stats = results.get("realism", {})
    if "synthetic" in stats:
        real_, synth = stats["real"], stats["synthetic"]
        lines += [(
            f"Synthetic against real faces (500 of each, in the {stats['gallery']:,}-face "
            "gallery), median distance to the person's mean: "
            f"{synth['median_distance_to_own_mean']} vs {real_['median_distance_to_own_mean']}; "
            "median distance to the nearest other face: "
            f"{synth['median_nearest_neighbour_distance']} vs "
            f"{real_['median_nearest_neighbour_distance']} (a real face's nearest is often "
            "its own mirrored view); nearest person-mean is the face's own person: "
            f"{synth['nearest_mean_is_own_person']:.0%} vs "
            f"{real_['nearest_mean_is_own_person']:.0%}. This ORL-trained model hardly "
            "tells LFW people apart (identity accuracy below), so identity agreement "
            "measures whether an index returns the same person as exact search, not "
            "whether either is right."), ""]
    lines += [("Targets for the plan `choose_index` picks (p50 < 5 ms, recall@10 ≥ 0.95, "
               "index ≤ 2 GiB):"), ""]
    for entry in results["sizes"]:
        for row in entry["candidates"]:
            if row["chosen"]:
                memory = row.get("plan_memory_estimate") or row["index_bytes"]
                checks = [(row["p50_ms"] < 5, f"p50 {row['p50_ms']:.2f} ms"),
                          (row["recall_at_10"] >= 0.95, f"recall@10 {row['recall_at_10']:.3f}"),
                          (memory <= 2 * 2**30, f"{memory / 2**30:.2f} GiB estimated in memory")]
                lines.append(f"- {entry['size']:,} faces, `{row['factory']}`: " + ", ".join(
                    f"{text} {'✓' if ok else '✗'}" for ok, text in checks))
    lines.append("")
    for entry in results["sizes"]:
        chosen = entry["choose_index"]
        lines += [(f"## {entry['size']:,} faces ({entry['real']:,} real + "
                   f"{entry['synthetic']:,} synthetic)"), "",
                  (f"`choose_index({entry['size']}, 2048)` → `{chosen['factory']}` "
                   f"({_params(chosen)}): {chosen['reason']}."), "",
                  ("| index | factory | parameters | train s | add s | MiB | p50 ms | p95 ms | "
                   "recall@10 | top-1 agree | identity agree | identity acc |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in entry["candidates"]:
            mark = " **← chosen**" if row["chosen"] else ""
            lines.append(
                f"| {row['name']}{mark} | `{row['factory']}` | {_params(row)} | {row['train_s']} "
                f"| {row['add_s']} | {row['index_bytes'] / 2**20:,.0f} | {row['p50_ms']:.2f} | "
                f"{row['p95_ms']:.2f} | {row['recall_at_10']:.3f} | {row['top1_agreement']:.3f} | "
                f"{row['identity_agreement']:.3f} | {row['identity_accuracy']:.3f} |")
        lines += ["", "Parameter sweeps (p50 over 30 queries):", "",
                  "| index | setting | p50 ms | recall@10 | top-1 agree | identity agree |",
                  "|---|---|---|---|---|---|"]
        for row in entry["candidates"]:
            for point in row["sweep"]:
                setting = ", ".join(f"{k}={point[k]}" for k in ("nprobe", "k_factor", "ef_search")
                                    if k in point)
                lines.append(f"| {row['name']} | {setting} | {point['p50_ms']:.2f} | "
                             f"{point['recall_at_10']:.3f} | {point['top1_agreement']:.3f} | "
                             f"{point['identity_agreement']:.3f} |")
        lines.append("")
    lines += ["## What choose_index picks", "", "| faces | plan | why |", "|---|---|---|"]
    for entry in results["sizes"]:
        chosen = entry["choose_index"]
        lines.append(f"| {entry['size']:,} | `{chosen['factory']}` {_params(chosen)} | "
                     f"{chosen['reason']} |")
    if "total_seconds" in results:
        lines += ["", f"Whole run: {results['total_seconds']:.0f} s."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _params(row: dict) -> str:
    names = {"nprobe": "nprobe", "k_factor_rf": "k_factor", "efSearch": "efSearch"}
    found = [f"{label}={row[key]}" for key, label in names.items() if row.get(key)]
    return ", ".join(found) or "—"


if __name__ == "__main__":
    main()
