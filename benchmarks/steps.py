"""How long each step of the user's path takes on this machine, on a quiet CPU.

    python benchmarks/steps.py [--gallery ../shared/data/orl] [--epochs 40]

Steps: `facerank train` (scratch preset), `facerank index build`, a warm `query` (closest +
classify, one photo, median of 20 after a warm-up), a one-shot `facerank query` from the shell
(median of 3), and `facerank evaluate`. Writes benchmarks/results/steps.{json,md}.
From random initialisation; data: the ORL face database (AT&T Laboratories Cambridge).
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

from facerank.quality.evaluate import evaluate
from facerank.data.gallery import scan_gallery
from facerank.store import FaceStore
from facerank.training.loop import train
from facerank.training.recipes import preset

HERE = Path(__file__).resolve().parent
DEFAULT_ORL = HERE.parent.parent / "shared" / "data" / "orl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=Path, default=DEFAULT_ORL)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "steps")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    images = len(scan_gallery(args.gallery))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "store"
        config = preset("scratch", epochs=args.epochs)
        started = time.perf_counter()
        result = train(args.gallery, folder, config, weights="none")
        rows.append(("train (scratch, %d epochs, %d px, %d images)" % (
            config.epochs, config.image_size, result.train_images),
            time.perf_counter() - started))
        store = FaceStore.open(folder)
        started = time.perf_counter()
        store.sync_folder(args.gallery)
        rows.append((f"index build ({images} images)", time.perf_counter() - started))
        started = time.perf_counter()
        scores = evaluate(store)
        rows.append((f"evaluate ({scores.images} held-out images)", time.perf_counter() - started))
        photo = str(scan_gallery(args.gallery).images[0].path)
        store.identify(photo, every=False)
        warm = []
        for _ in range(20):
            started = time.perf_counter()
            store.identify(photo, k=5, top_k=5, every=False)
            warm.append(time.perf_counter() - started)
        rows.append(("query, warm process (closest + classify, 1 photo)", float(np.median(warm))))
        shell = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "facerank", "identify", photo, "--largest",
                            "--store", str(folder), "--json"], check=True, capture_output=True)
            shell.append(time.perf_counter() - started)
        rows.append(("`facerank query` one-shot from the shell", float(np.median(shell))))
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "gallery": str(args.gallery), "held_out_accuracy": result.test_accuracy,
               "steps": [{"step": name, "seconds": round(seconds, 3)} for name, seconds in rows]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Time per step ({results['machine']}, from random initialisation)", "",
             f"Gallery: ORL, {images} images; held-out accuracy of this run "
             f"{result.test_accuracy:.1%}.", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.3f} |" if seconds < 10 else f"| {name} | {seconds:.0f} |"
              for name, seconds in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
