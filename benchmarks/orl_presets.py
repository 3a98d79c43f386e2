"""ORL, 70/30 per person: each training preset from random initialisation, plus a PCA + SVM
baseline, raw vs L2-normalised embeddings for nearest-neighbour ranking, and the time each step
of the user's path takes on this machine.

    python benchmarks/orl_presets.py [--orl ../shared/data/orl] [--seed 0] [--presets scratch,sgd,freeze]

Writes benchmarks/results/orl_presets.{json,md}. Every figure is from random initialisation
(no ImageNet weights can be downloaded where this was run): the method's sgd and freeze presets
assume ImageNet weights and are shown here only to say how they fare without them.
Data: the ORL face database (AT&T Laboratories Cambridge; Samaria & Harter 1994).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from facerank.quality.evaluate import evaluate
from facerank.data.gallery import scan_gallery, split_gallery
from facerank.data.images import load_image
from facerank.search.index import FaceIndex
from facerank.store import FaceStore
from facerank.training.loop import train
from facerank.training.recipes import preset

HERE = Path(__file__).resolve().parent
DEFAULT_ORL = HERE.parent.parent / "shared" / "data" / "orl"


def ranking_quality(vectors: np.ndarray, people: list[str]) -> dict:
    """Leave-one-out over all images: 1-NN accuracy and mean average precision."""
    index = FaceIndex(vectors.shape[1])
    index.add(np.arange(len(vectors)), vectors)
    _, ids = index.search(vectors, len(vectors))
    labels = np.array(people)
    hits, average_precisions = [], []
    for row, neighbours in enumerate(ids):
        neighbours = neighbours[neighbours != row]
        relevant = labels[neighbours] == labels[row]
        hits.append(relevant[0])
        ranks = np.flatnonzero(relevant) + 1
        average_precisions.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return {"nn_accuracy": float(np.mean(hits)), "mean_average_precision":
            float(np.mean(average_precisions))}


def pca_svm_baseline(train_items, test_items, size=(46, 56)) -> dict:
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC

    def pixels(items):
        return np.stack([np.asarray(load_image(i.path).convert("L").resize(size), np.float32)
                         .ravel() / 255.0 for i in items])

    started = time.perf_counter()
    model = make_pipeline(PCA(n_components=60, whiten=True, random_state=0),
                          SVC(kernel="rbf", C=10.0, gamma="scale"))
    model.fit(pixels(train_items), [i.person for i in train_items])
    predicted = model.predict(pixels(test_items))
    accuracy = float(np.mean(predicted == np.array([i.person for i in test_items])))
    return {"accuracy": accuracy, "seconds": round(time.perf_counter() - started, 2)}


def run_preset(name: str, orl: Path, seed: int, workdir: Path) -> dict:
    store_dir = workdir / name
    started = time.perf_counter()
    result = train(orl, store_dir, preset(name, seed=seed), weights="none")
    train_seconds = time.perf_counter() - started
    store = FaceStore.open(store_dir)
    evaluation = evaluate(store)

    started = time.perf_counter()
    report = store.sync_folder(orl)
    index_seconds = time.perf_counter() - started
    photo = str(scan_gallery(orl).images[0].path)
    store.identify(photo, every=False)  # warm-up
    timings = []
    for _ in range(10):
        started = time.perf_counter()
        store.identify(photo, k=5, top_k=5, every=False)
        timings.append(time.perf_counter() - started)

    # Raw vs L2-normalised avg_pool vectors of the same trained network, all 400 images.
    items = scan_gallery(orl).images
    images = [load_image(i.path) for i in items]
    people = [i.person for i in items]
    quality = {}
    for normalised in (False, True):
        store.model.config = dataclasses.replace(store.model.config,
                                                 normalize_embeddings=normalised)
        quality["l2" if normalised else "raw"] = ranking_quality(store.model.embed(images), people)
    return {
        "preset": name, "config": dataclasses.asdict(preset(name, seed=seed)),
        "weights": result.weights_origin, "kept_epoch": result.kept_epoch,
        "held_out_accuracy": evaluation.accuracy, "top5_accuracy": evaluation.top5_accuracy,
        "macro_precision": evaluation.precision, "macro_recall": evaluation.recall,
        "macro_f1": evaluation.f1, "nn_accuracy": evaluation.nearest_neighbour_accuracy,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(float(np.median([r["seconds"] for r in result.history])), 2),
        "index_build_seconds": round(index_seconds, 2), "indexed": report.added,
        "query_ms_median": round(1000 * float(np.median(timings)), 1),
        "leave_one_out_ranking": quality,
    }


def to_markdown(results: dict) -> str:
    lines = [
        "# ORL, 70/30 per person, from random initialisation",
        "",
        f"Seed {results['seed']}; {results['machine']}. No ImageNet weights were available: every "
        "number below is from random initialisation. The method's `sgd` and `freeze` presets "
        "assume ImageNet weights; from scratch they are shown only to say how they fare.",
        "Data: ORL face database (AT&T Laboratories Cambridge; Samaria & Harter 1994).",
        "",
        "| recipe | held-out top-1 | top-5 | macro P | macro R | macro F1 | 1-NN (closest) | "
        "train s | s/epoch | index 400 imgs s | query ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["presets"]:
        lines.append(
            f"| `{r['preset']}` ({r['config']['epochs']} ep, {r['config']['image_size']} px) | "
            f"{r['held_out_accuracy']:.1%} | {r['top5_accuracy']:.1%} | {r['macro_precision']:.1%} "
            f"| {r['macro_recall']:.1%} | {r['macro_f1']:.1%} | {r['nn_accuracy']:.1%} | "
            f"{r['train_seconds']:.0f} | {r['seconds_per_epoch']:.1f} | "
            f"{r['index_build_seconds']:.1f} | {r['query_ms_median']:.0f} |")
    baseline = results["pca_svm"]
    lines += [f"| PCA (60, whitened) + RBF SVM on 46×56 pixels | {baseline['accuracy']:.1%} | | | "
              f"| | | {baseline['seconds']:.0f} | | | |", "",
              "Timings are wall-clock on the 2-core machine and were taken while other jobs "
              "(the test suite) shared it: read them as upper bounds; "
              "`benchmarks/steps.py` times each step on a quiet machine.", "",
              "## Raw vs L2-normalised embeddings", "",
              "Leave-one-out nearest-neighbour search over all 400 images (280 of them seen in "
              "training), with the avg_pool vectors of the same trained network, raw or "
              "L2-normalised: 1-NN accuracy and mean average precision.", "",
              "| recipe | raw 1-NN | L2 1-NN | raw mAP | L2 mAP |", "|---|---|---|---|---|"]
    for r in results["presets"]:
        q = r["leave_one_out_ranking"]
        lines.append(f"| `{r['preset']}` | {q['raw']['nn_accuracy']:.1%} | "
                     f"{q['l2']['nn_accuracy']:.1%} | {q['raw']['mean_average_precision']:.3f} | "
                     f"{q['l2']['mean_average_precision']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orl", type=Path, default=DEFAULT_ORL)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--presets", default="scratch,sgd,freeze")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "orl_presets")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    split = split_gallery(scan_gallery(args.orl), seed=args.seed)
    results = {"seed": args.seed, "machine": f"{platform.processor() or platform.machine()}, "
               f"{__import__('os').cpu_count()} cores", "presets": []}
    results["pca_svm"] = pca_svm_baseline(split.train, split.test)
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.presets.split(","):
            print(f"training {name} ...", flush=True)
            results["presets"].append(run_preset(name, args.orl, args.seed, Path(workdir)))
            print(json.dumps(results["presets"][-1], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
