"""The "before" of store_writes.py: one enrolment into a format-1 store (facerank before its
database), which rewrote the whole index and records file at every commit.

    git worktree add /tmp/facerank-format1 08f7aa8
    PYTHONPATH=/tmp/facerank-format1 python benchmarks/store_writes_format1.py --sizes 1000 10000

Same model, photos and synthetic vectors as store_writes.py (written through format 1's own
index and commit); writes benchmarks/results/store_writes_format1.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from store_writes import GALLERY, demo_model, written_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--enrolments", type=int, default=10)
    args = parser.parse_args()
    import facerank.store as store_module

    if not hasattr(store_module, "STATE_FILE"):
        raise SystemExit("run with PYTHONPATH pointing at a format-1 checkout (see --help)")
    from facerank.store import FaceStore, Record

    work = Path(tempfile.mkdtemp(prefix="facerank-format1-"))
    model = demo_model(work / "model")
    photos = sorted(GALLERY.glob("*/*.pgm"))[:args.enrolments + 1]
    rows = []
    for size in args.sizes:
        folder = work / f"store-{size}"
        shutil.copytree(model, folder)
        store = FaceStore.open(folder)
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((size, store.model.config.embedding_dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store._index.add(np.arange(size), vectors)
        store._records.update((i, Record(i, f"/synthetic/{i}.jpg", f"person{i // 20}", "0" * 64))
                              for i in range(size))
        store._state["next_id"] = size
        store._commit()
        store = FaceStore.open(folder)
        store.add([photos[0]], person="warm-up")
        totals, writes = [], []
        for number, photo in enumerate(photos[1:]):
            before, started = written_bytes(), time.perf_counter()
            store.add([photo], person=f"visitor{number}")
            totals.append(time.perf_counter() - started)
            writes.append(written_bytes() - before)
        rows.append({"records": size, "p50_ms": round(float(np.median(totals)) * 1000, 1),
                     "bytes_p50": int(np.median(writes))})
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(folder)
    shutil.rmtree(work)
    results = HERE / "results"
    (results / "store_writes_format1.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# One enrolment into a format-1 store (before the database)", "",
             "| records | enrol p50 (ms) | bytes written p50 |", "|---|---|---|"]
    lines += [f"| {r['records']:,} | {r['p50_ms']} | {r['bytes_p50']:,} |" for r in rows]
    (results / "store_writes_format1.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
