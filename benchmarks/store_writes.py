"""What one enrolment costs as a store grows: latency, bytes written, and the time to open it.

    python benchmarks/store_writes.py [--sizes 1000 100000 1000000] [--enrolments 20]

For each size, a store is filled with that many records (synthetic unit vectors of the real
2048 dimensions, written through the store's own database layer, then compacted into the index
kind ``choose_index`` picks for that size), and then real photos are enrolled one at a time with
``FaceStore.add``, as the server's enrolment does. Measured per enrolment: wall time (split into
embedding the photo and the store's own work), and bytes passed to write() by the process
(``wchar`` in /proc/self/io: the database's WAL pages and fsyncs, any index file). Also the time
to open the store in a fresh process (model, database, index file, change log). The model is the
demo store's (bundled ORL subset, 64 px, 1 epoch from random initialisation): only its cost per
photo matters here, not its accuracy.

Writes benchmarks/results/store_writes.{json,md}. Needs ~10 GB of disk at 1M (the vectors are
kept in the database, float32).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
GALLERY = HERE.parent / "examples" / "gallery"

from machine import cpu_model  # noqa: E402


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def demo_model(folder: Path) -> Path:
    from facerank.training.loop import train
    from facerank.training.recipes import preset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train(GALLERY, folder, preset("scratch", epochs=1, image_size=64), weights="none")
    return folder


def fill(folder: Path, count: int, *, chunk: int = 20_000) -> float:
    """Add ``count`` synthetic records straight into the database, then build the index from
    them with ``reindex`` (as a migration or an index-kind change does); returns seconds.

    The records skip the change log: replaying a million of them at the next open would hold
    every vector in memory twice, where the store itself never lets that log pass
    ``snapshot.DELTA_MAX`` before compacting it into the index file."""
    from facerank.store import FaceStore
    from facerank.store.database import Database
    from facerank.store.results import Record

    store = FaceStore.open(folder)
    snapshot = store.snapshot()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        # Clustered like faces (people), not uniform noise: 20 photos per synthetic person.
        centres = rng.standard_normal((size // 20 + 1, snapshot.dim)).astype(np.float32)
        vectors = centres[np.arange(size) // 20] + 0.3 * rng.standard_normal(
            (size, snapshot.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with store.database.writing() as sql:
            ids = [Database.insert_record(sql, Record(0, f"/synthetic/{start + i}.jpg",
                                                      f"person{(start + i) // 20}", "0" * 64))
                   for i in range(size)]
            Database.insert_vectors(sql, snapshot.generation, ids, vectors)
            Database.bump_version(sql)
        print(f"  filled {start + size:,}/{count:,}", flush=True)
    factory = FaceStore.open(folder).reindex()
    print(f"  index for {count:,}: {factory}", flush=True)
    return time.perf_counter() - started


def open_seconds(folder: Path) -> dict:
    """Opening the store in a fresh process: total, and without the model."""
    code = ("import time, sys; t = time.perf_counter(); from facerank.store import FaceStore; "
            "s = FaceStore.open(sys.argv[1]); n = len(s); "
            "print(time.perf_counter() - t, n)")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                         text=True, check=True).stdout.split()
    return {"open_s": round(float(out[0]), 3), "records": int(out[1])}


def enrol(folder: Path, photos: list[Path]) -> dict:
    from facerank.store import FaceStore

    store = FaceStore.open(folder)
    model = store.model
    embed_seconds = []
    original = model.embed

    def timed_embed(*args, **kwargs):
        started = time.perf_counter()
        result = original(*args, **kwargs)
        embed_seconds.append(time.perf_counter() - started)
        return result

    model.embed = timed_embed
    store.add([photos[0]], person="warm-up")  # first call: thread pools, caches
    embed_seconds.clear()
    totals, writes = [], []
    for number, photo in enumerate(photos[1:]):
        before = written_bytes()
        started = time.perf_counter()
        report = store.add([photo], person=f"visitor{number}")
        totals.append(time.perf_counter() - started)
        writes.append(written_bytes() - before)
        assert report.added == 1, report
    totals, embeds = np.array(totals) * 1000, np.array(embed_seconds) * 1000
    return {"enrolments": len(totals), "p50_ms": round(float(np.median(totals)), 1),
            "p90_ms": round(float(np.percentile(totals, 90)), 1),
            "embed_p50_ms": round(float(np.median(embeds)), 1),
            "store_p50_ms": round(float(np.median(totals - embeds)), 1),
            "bytes_p50": int(np.median(writes)), "bytes_max": int(np.max(writes)),
            "index_factory": store.info()["index_factory"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000, 1_000_000])
    parser.add_argument("--enrolments", type=int, default=20)
    parser.add_argument("--work", type=Path, help="folder for the stores (default: a temp dir)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the filled stores in --work, and reuse them on the next run")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="facerank-store-writes-"))
    model = work / "model"
    if not (model / "model.json").exists():
        demo_model(model)
    photos = sorted(GALLERY.glob("*/*.pgm"))[:args.enrolments + 1]
    rows = []
    for size in args.sizes:
        folder, kept = work / f"store-{size}", work / f"store-{size}.filled"
        print(f"{size:,} records", flush=True)
        if args.keep and kept.is_dir():
            fill_s = json.loads((kept / "fill.json").read_text())["fill_s"]
        else:
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(model, kept)
            fill_s = fill(kept, size)
            (kept / "fill.json").write_text(json.dumps({"fill_s": fill_s}))
        # Enrolments change the store: they go into a copy, so a kept store stays as filled.
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(kept, folder)
        opened = open_seconds(folder)
        row = {"records": size, "fill_s": round(fill_s, 1), **opened, **enrol(folder, photos)}
        row["database_bytes"] = sum(p.stat().st_size for p in folder.glob("store.sqlite*"))
        row["index_bytes"] = sum(p.stat().st_size for p in folder.glob("index-*.faiss"))
        print(json.dumps(row), flush=True)
        rows.append(row)
        shutil.rmtree(folder)
        if not args.keep:
            shutil.rmtree(kept)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    meta = {"cpu": cpu_model(), "python": sys.version.split()[0], "rows": rows,
            "command": "python benchmarks/store_writes.py " + " ".join(sys.argv[1:])}
    (results / "store_writes.json").write_text(json.dumps(meta, indent=2) + "\n")
    lines = [f"# One enrolment as the store grows ({meta['cpu']})", "",
             f"`{meta['command'].strip()}`: each enrolment is `FaceStore.add` of one real "
             "photo (64 px model); bytes = what the process passed to write().", "",
             "| records | index kind | open (s) | enrol p50 (ms) | read, face step, database (ms) | "
             "embedding (ms) | enrol p90 (ms) | bytes written p50 | max | database | index file |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['records']:,} | `{row['index_factory']}` | {row['open_s']} | "
                     f"{row['p50_ms']} | {row['store_p50_ms']} | {row['embed_p50_ms']} | "
                     f"{row['p90_ms']} | {row['bytes_p50']:,} | {row['bytes_max']:,} | "
                     f"{row['database_bytes'] / 2**20:,.0f} MiB | "
                     f"{row['index_bytes'] / 2**20:,.0f} MiB |")
    (results / "store_writes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
