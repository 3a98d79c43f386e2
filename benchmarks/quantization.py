"""Is int8 a safe fast path? A trained store's ONNX model quantised by ONNX Runtime, against fp32.

    python benchmarks/quantization.py --store faces/       # a store trained on ORL (70/30 split)
    python benchmarks/quantization.py                      # trains one first (scratch, ~12 min)

The issue's bar for a fast path to become the default, on real trained weights and real faces:
cosine >= 0.999 between its embeddings and fp32's, the same top-1 identity on the held-out
split, and top-10 neighbours agreeing >= 99%. This CPU has AVX-512 VNNI (int8 dot products) but
no AMX, so bf16 is emulated and slower (see embedding_speed.md): int8 is the candidate here.

Quantisation: ``facerank.model.precision.quantise``, what ``facerank precision int8`` runs: ONNX
Runtime's static QDQ quantiser (``quant_pre_process`` first, then
``quantize_static``), int8 weights per output channel, uint8 activations, ranges calibrated on
the store's *training* images (the held-out ones only ever score). Variants: min/max or
percentile calibration, and the network's tail (last bottleneck, or all of layer4) kept in fp32.
Fidelity is measured on the held-out images: per-image cosine to fp32, classify top-1 against
fp32's and against the truth, and overlap of the 10 nearest training images (exact search, each
precision its own gallery). Speed: images/s of every session at batch 1 and 8, timed in
interleaved rounds in the same run (medians), at the trained size and at ``--sizes`` (the same
weights; speed does not depend on what they learnt). Writes
benchmarks/results/quantization.{json,md}.
Data: the ORL face database (AT&T Laboratories Cambridge; Samaria & Harter 1994).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from machine import cpu_model

HERE = Path(__file__).resolve().parent
ORL = HERE.parent.parent / "shared" / "data" / "orl"
CACHE = HERE / ".cache" / "quantization"
RESULTS = HERE / "results"
BAR = {"cosine": 0.999, "top10": 0.99}
# Which parts stay fp32: the embedding is the last bottleneck's pooled output, so its rounding
# errors reach the face print undiluted.
VARIANTS = [("int8", {}),
            ("int8, percentile calibration", {"method": "Percentile"}),
            ("int8, last bottleneck fp32", {"fp32_tail_convs": 3}),
            ("int8, last stage (layer4) fp32", {"fp32_tail_convs": 10})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="a store trained with a held-out split "
                        "(default: train scratch on ORL, seed 0, into benchmarks/.cache)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (medians)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224],
                        help="extra input sizes to time, beside the trained one")
    args = parser.parse_args()

    store = args.store or trained_store()
    from facerank.model.config import read_config
    from facerank.model.precision import quantise

    config = read_config(store)
    split = json.loads((store / "train" / "split.json").read_text())
    train_paths = [path for path, _ in split["train"]]
    test_paths, truth = [p for p, _ in split["test"]], [w for _, w in split["test"]]
    train_people = [w for _, w in split["train"]]

    with tempfile.TemporaryDirectory() as work:
        sessions, variants = {"fp32": session(store / config.onnx_file)}, []
        for name, options in VARIANTS:
            path = Path(work) / f"int8-{len(variants)}.onnx"
            started = time.perf_counter()
            quantise(store / config.onnx_file, path, train_paths, config, **options)
            sessions[name] = session(path)
            fidelity = measure_fidelity(sessions["fp32"], sessions[name], config, train_paths,
                                        train_people, test_paths, truth)
            variants.append({"name": name, "options": options, "fidelity": fidelity,
                             "passes_bar": passes(fidelity),
                             "quantise_seconds": round(time.perf_counter() - started, 1)})
            print(name, fidelity, flush=True)
        speed = [measure_speed(sessions, size, batch, args.rounds, test_paths, config)
                 for size, batch in [(config.image_size, 1), (config.image_size, 8), *(
                     (size, batch) for size in args.sizes for batch in (1, 8))]]
    import onnxruntime

    results = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "onnxruntime": onnxruntime.__version__},
        "store": {"image_size": config.image_size, "weights_origin": config.weights_origin,
                  "people": len(config.people), "train_images": len(train_paths),
                  "test_images": len(test_paths), "recipe": train_recipe(store)},
        "variants": variants, "speed": speed, "bar": BAR}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantization.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "quantization.md").write_text(markdown(results))
    print(markdown(results))


def trained_store() -> Path:
    store = CACHE / "store"
    if not (store / "model.json").exists():
        from facerank.training.loop import train
        from facerank.training.recipes import preset

        train(ORL, store, preset("scratch", seed=0), weights="none", show_progress=True)
    return store


def train_recipe(store: Path) -> dict:
    history = json.loads((store / "train" / "history.json").read_text())
    recipe = history.get("config", {})
    return {k: recipe.get(k) for k in ("preset", "epochs", "image_size", "seed", "keep")}


def pixels(paths: list[str], size: int, crop: float) -> np.ndarray:
    """The ONNX model's input: N x 3 x S x S float32 RGB, 0..255 (normalised inside the graph)."""
    from facerank.model.config import resize_for_model
    from facerank.data.images import load_image

    batch = np.stack([resize_for_model(load_image(p), size, crop) for p in paths])
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(model, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vectors, probabilities = [], []
    for start in range(0, len(batch), 32):
        v, p = model.run(["embedding", "probabilities"], {"pixels": batch[start:start + 32]})
        vectors.append(v)
        probabilities.append(p)
    return np.concatenate(vectors), np.concatenate(probabilities)


def measure_fidelity(fp32, int8, config, train_paths, train_people, test_paths, truth) -> dict:
    import faiss

    gallery = pixels(train_paths, config.image_size, config.crop)
    queries = pixels(test_paths, config.image_size, config.crop)
    answers = {}
    for name, model in (("fp32", fp32), ("int8", int8)):
        gallery_vectors, _ = run(model, gallery)
        query_vectors, probabilities = run(model, queries)
        index = faiss.IndexFlatL2(gallery_vectors.shape[1])
        index.add(gallery_vectors)
        _, neighbours = index.search(query_vectors, 10)
        answers[name] = (query_vectors, probabilities.argmax(1), neighbours)
    (v32, top32, near32), (v8, top8, near8) = answers["fp32"], answers["int8"]
    cosine = np.sum(v32 * v8, axis=1) / (np.linalg.norm(v32, axis=1) * np.linalg.norm(v8, axis=1))
    people = np.array(config.people)
    nearest_person = {name: np.array(train_people)[answers[name][2][:, 0]] for name in answers}
    return {
        "cosine_min": float(cosine.min()), "cosine_p1": float(np.percentile(cosine, 1)),
        "cosine_median": float(np.median(cosine)),
        "top1_agreement": float(np.mean(top32 == top8)),
        "classify_accuracy": {"fp32": float(np.mean(people[top32] == truth)),
                              "int8": float(np.mean(people[top8] == truth))},
        "closest_accuracy": {name: float(np.mean(nearest_person[name] == truth))
                             for name in answers},
        "top10_agreement": float(np.mean([len(set(a) & set(b)) / 10
                                          for a, b in zip(near32, near8)])),
    }


def passes(fidelity: dict) -> bool:
    return (fidelity["cosine_min"] >= BAR["cosine"] and fidelity["top1_agreement"] == 1.0
            and fidelity["top10_agreement"] >= BAR["top10"])


def measure_speed(sessions: dict, size, batch, rounds, paths, config) -> dict:
    inputs = pixels(paths[:batch], size, config.crop)
    repeats = max(1, 32 // batch)
    for model in sessions.values():  # warm-up
        model.run(None, {"pixels": inputs})
    timings = {name: [] for name in sessions}
    for _ in range(rounds):  # interleaved, so all see the same load on this noisy machine
        for name, model in sessions.items():
            started = time.perf_counter()
            for _ in range(repeats):
                model.run(None, {"pixels": inputs})
            timings[name].append(batch * repeats / (time.perf_counter() - started))
    return {"size": size, "batch": batch,
            "images_per_s": {name: round(statistics.median(v), 1) for name, v in timings.items()}}


def markdown(results: dict) -> str:
    s, names = results["store"], [v["name"] for v in results["variants"]]
    lines = [
        f"# int8 (ONNX Runtime static quantisation) against fp32 ({results['machine']['cpu']}, "
        f"{results['machine']['cores']} cores, onnxruntime {results['machine']['onnxruntime']})",
        "",
        f"Store: ResNet50 trained on ORL from random initialisation (weights: "
        f"{s['weights_origin']}), {s['image_size']} px, {s['people']} people, "
        f"{s['train_images']} training images (also the calibration set), {s['test_images']} "
        f"held-out images scored. Recipe: {s['recipe']}." + (f" Note: {s['note']}."
                                                             if s.get("note") else ""),
        "",
        f"## Fidelity on the held-out images (bar: cosine ≥ {BAR['cosine']}, the same top-1, "
        f"top-10 shared ≥ {BAR['top10']:.0%})",
        "",
        "| variant | min cosine | p1 / median cosine | same top-1 | top-10 shared | "
        "classify acc fp32 → int8 | 1-NN acc fp32 → int8 | bar |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in results["variants"]:
        f = v["fidelity"]
        lines.append(
            f"| {v['name']} | {f['cosine_min']:.4f} | {f['cosine_p1']:.4f} / "
            f"{f['cosine_median']:.4f} | {f['top1_agreement']:.1%} | {f['top10_agreement']:.1%} "
            f"| {f['classify_accuracy']['fp32']:.1%} → {f['classify_accuracy']['int8']:.1%} | "
            f"{f['closest_accuracy']['fp32']:.1%} → {f['closest_accuracy']['int8']:.1%} | "
            f"{'passes' if v['passes_bar'] else 'fails'} |")
    lines += ["", "## Speed (images/s, medians of interleaved rounds in one run; × = over fp32)",
              "", "| size | batch | fp32 | " + " | ".join(names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    for r in results["speed"]:
        base = r["images_per_s"]["fp32"]
        lines.append(f"| {r['size']} | {r['batch']} | {base} | " + " | ".join(
            f"{r['images_per_s'][n]} ({r['images_per_s'][n] / base:.2f}×)" for n in names) + " |")
    lines += ["", "Reproduce: `python benchmarks/quantization.py --store STORE` "
              "(a store trained with a held-out split).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
