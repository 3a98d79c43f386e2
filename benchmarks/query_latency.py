"""Indexing throughput, warm query latency and one-shot CLI latency, by runtime and input size.

    python benchmarks/query_latency.py            # full: 10,000 LFW images at 64 px, 2,000 at 224
    python benchmarks/query_latency.py --quick    # 500 images, ~2 min

For each input size (64 px, the `scratch` preset's default, and 224 px, the method's), a store
is made with an *untrained* ResNet50 of that size (speed does not depend on the weights' values)
and filled from a gallery of real LFW photos (symlinks, one folder per person):

* index build, end to end: decode + resize + network + FAISS + records, images/s;
* a warm process answering ``closest`` + ``classify`` for one photo (``store.query``), median
  and p95 of 30 after a warm-up, through ONNX Runtime and through torch;
* a one-shot ``facerank query photo.jpg --json`` from the shell, median of 5, both runtimes,
  beside the cost of ``python -c pass`` and ``python -c "import torch"`` measured in the same run.

Writes benchmarks/results/query_latency.{json,md}. Data: Labeled Faces in the Wild (Huang et al.,
2007), deep-funneled images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_LFW = HERE.parent.parent / "shared" / "data" / "lfw" / "images"


def make_gallery(lfw: Path, folder: Path, count: int) -> tuple[Path, list[str]]:
    """The first ``count`` LFW images (sorted by person, then file) as a gallery of symlinks."""
    people = []
    made = 0
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))[:count - made]
        if not photos:
            continue
        (folder / person.name).mkdir(parents=True)
        for photo in photos:
            (folder / person.name / photo.name).symlink_to(photo)
        people.append(person.name)
        made += len(photos)
        if made >= count:
            break
    return folder, people


def timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def shell(command: list[str], repeats: int, env: dict | None = None) -> list[float]:
    environment = {**os.environ, **(env or {})}
    return timed(lambda: subprocess.run(command, check=True, capture_output=True,
                                        env=environment), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--sizes", nargs="+", default=["64", "224:2000"],
                        help="input sizes, each optionally SIZE:IMAGES to index fewer images "
                             "(224 px indexes at ~25 img/s here: 10,000 would take 7 minutes)")
    parser.add_argument("--quick", action="store_true", help="500 images, fewer repeats")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "query_latency")
    args = parser.parse_args()
    if args.quick:
        args.images = min(args.images, 500)
    warm_repeats, shell_repeats = (10, 2) if args.quick else (30, 5)
    warnings.simplefilter("ignore", UserWarning)

    from facerank.model.torch_model import FaceModel
    from facerank.store import FaceStore

    python = sys.executable
    load_at_start = os.getloadavg()[0]
    baseline = {
        "python -c pass": float(np.median(shell([python, "-c", "pass"], shell_repeats))),
        "python -c 'import torch'": float(np.median(
            shell([python, "-c", "import torch"], shell_repeats))),
        "python -c 'import onnxruntime'": float(np.median(
            shell([python, "-c", "import onnxruntime"], shell_repeats))),
    }
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        gallery, people = make_gallery(args.lfw, Path(scratch) / "gallery", args.images)
        photo = str(next(gallery.glob("*/*.jpg")).resolve())
        for spec in args.sizes:
            size, _, count = spec.partition(":")
            size, count = int(size), min(int(count or args.images), args.images)
            subset, subset_people = (gallery, people) if count == args.images else make_gallery(
                args.lfw, Path(scratch) / f"gallery-{count}", count)
            folder = Path(scratch) / f"store-{size}"
            FaceModel.create(subset_people, weights="none", image_size=size).save(folder)
            store = FaceStore.open(folder)
            started = time.perf_counter()
            report = store.sync_folder(subset)
            build = time.perf_counter() - started
            indexed = len(store)
            row = {"image_size": size, "images": indexed, "people": len(subset_people),
                   "index": store.info()["index_factory"],
                   "skipped": len(report.skipped), "index_build_s": round(build, 2),
                   "index_images_per_s": round(indexed / build, 1)}
            for runtime in ("onnxruntime", "torch"):
                opened = FaceStore.open(folder, runtime=runtime)
                opened.identify(photo, every=False)  # warm-up: first-call allocations, thread pools
                warm = timed(lambda: opened.identify(photo, k=5, top_k=5, every=False), warm_repeats)
                row[f"warm_query_ms_{runtime}"] = round(1000 * float(np.median(warm)), 1)
                row[f"warm_query_p95_ms_{runtime}"] = round(
                    1000 * float(np.percentile(warm, 95)), 1)
                one_shot = shell([python, "-m", "facerank", "identify", photo, "--largest",
                                  "--store", str(folder), "--json"], shell_repeats,
                                 env={"FACERANK_RUNTIME": runtime})
                row[f"one_shot_s_{runtime}"] = round(float(np.median(one_shot)), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)

    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                          f"{platform.python_version()}",
               "load_average_start_end": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
               "quick": args.quick, "baseline_s": {k: round(v, 3) for k, v in baseline.items()},
               "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())


def write_markdown(results: dict, path: Path) -> None:
    lines = [f"# Indexing and query latency ({results['machine']})", "",
             "Untrained ResNet50 of each input size (speed does not depend on the weights), real "
             "LFW photos (250x250 JPEG). Warm query = `store.query` (closest k=5 + classify "
             "top-5) for one photo, median of 30 (p95 beside); one-shot = `facerank query "
             "photo.jpg --json` as a new process, median of 5.", "",
             "| size | gallery (index) | index build | warm query ORT (p95) | warm query torch (p95) "
             "| one-shot ORT | one-shot torch |", "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(
            f"| {row['image_size']} px | {row['images']:,} images, {row['people']:,} people "
            f"(`{row['index']}`) "
            f"| {row['index_build_s']:.0f} s ({row['index_images_per_s']:.0f} img/s) "
            f"| {row['warm_query_ms_onnxruntime']} ms ({row['warm_query_p95_ms_onnxruntime']}) "
            f"| {row['warm_query_ms_torch']} ms ({row['warm_query_p95_ms_torch']}) "
            f"| {row['one_shot_s_onnxruntime']:.2f} s | {row['one_shot_s_torch']:.2f} s |")
    base = results["baseline_s"]
    start, end = results["load_average_start_end"]
    lines += ["", f"Load average (1 min) at start and end: {start}, {end} (2 cores: above ~0.5 "
              "means other work shared the CPU).", "", "Same run, for scale: " + "; ".join(f"`{k}` {v:.2f} s" for k, v in base.items())
              + ".", ""]
    if results["quick"]:
        lines.append("*Quick run (`--quick`): small gallery, few repeats; not the published "
                     "figures.*")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
