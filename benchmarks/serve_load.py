"""Load test of `facerank serve` on loopback: identify at 1, 4 and 16 concurrent clients.

    python benchmarks/serve_load.py [--store faces/] [--requests 64] [--seconds 60]
    PYTHONPATH=OLD_CHECKOUT python benchmarks/serve_load.py --store S --out results/serve_load-before

Without --store, trains the demo store first (bundled ORL subset, 64 px, from random
initialisation). While each level runs, another process (benchmarks/health_probe.py) asks
`/api/health` every 20 ms: its latency shows whether the server's event loop stays free while
the model works. The server runs
the facerank that ``python -m facerank`` imports, so an older checkout on PYTHONPATH measures
"before". Bounded in count and time, loopback only. Writes benchmarks/results/serve_load.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import health_probe  # benchmarks/health_probe.py, beside this script
import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
GALLERY = HERE.parent / "examples" / "gallery"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def demo_store(folder: Path) -> Path:
    from facerank.store import FaceStore
    from facerank.training.loop import train
    from facerank.training.recipes import preset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train(GALLERY, folder, preset("scratch", epochs=30), weights="none")
    FaceStore.open(folder).sync_folder(GALLERY)
    return folder


def run_level(url: str, photo: bytes, clients: int, requests: int, deadline: float) -> dict:
    latencies, failures = [], 0
    lock = threading.Lock()

    def worker(count: int):
        nonlocal failures
        with httpx.Client(timeout=60) as client:
            for _ in range(count):
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                response = client.post(url, files={"photo": ("p.pgm", photo)})
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        failures += 1

    probe = health_probe.start(url.split("/api/")[0] + "/api/health", every=0.02)
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(clients) as pool:
            share = [requests // clients + (i < requests % clients) for i in range(clients)]
            list(pool.map(worker, share))
    finally:
        wall = time.perf_counter() - started
        polls = health_probe.stop(probe)
    health = [poll["seconds"] for poll in polls]
    if any(poll["status"] != 200 for poll in polls):
        raise RuntimeError(f"/api/health failed under load: {polls}")
    ms, health_ms = np.array(latencies) * 1000, np.array(health) * 1000
    return {"clients": clients, "requests": len(latencies), "failures": failures,
            "requests_per_second": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "health_p50_ms": round(float(np.percentile(health_ms, 50)), 1),
            "health_max_ms": round(float(health_ms.max()), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path)
    parser.add_argument("--requests", type=int, default=64, help="per concurrency level")
    parser.add_argument("--seconds", type=float, default=60, help="time limit per level")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve_load")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        store = args.store or demo_store(Path(scratch) / "store")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "facerank", "serve", "--store",
                                   str(store), "--port", str(port)], stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    httpx.get(f"{base}/api/health", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            name = httpx.get(f"{base}/api/health").json()["stores"][0]
            url = f"{base}/api/stores/{name}/identify"
            photo = (GALLERY / "s3" / "4.pgm").read_bytes()
            httpx.post(url, files={"photo": ("p.pgm", photo)}, timeout=60)  # warm-up
            levels = [run_level(url, photo, clients, args.requests,
                                time.monotonic() + args.seconds) for clients in (1, 4, 16)]
        finally:
            server.terminate()
            server.wait(timeout=30)
    image_size = json.loads((Path(store) / "model.json").read_text())["image_size"] \
        if args.store else 64
    import facerank

    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
               # Which checkout served, relative to this one ("." unless PYTHONPATH chose another).
               "facerank": os.path.relpath(Path(facerank.__file__).parent.parent, HERE.parent),
               "endpoint": "POST /api/stores/{name}/identify", "image_size": image_size,
               "levels": levels}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# `facerank serve` under load ({results['machine']}, loopback, ResNet50 at "
             f"{image_size} px)", "", "| concurrent clients | requests | req/s | p50 ms | p99 ms "
             "| health p50 ms | health max ms | failures |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {l['clients']} | {l['requests']} | {l['requests_per_second']} | {l['p50_ms']} | "
              f"{l['p99_ms']} | {l['health_p50_ms']} | {l['health_max_ms']} | {l['failures']} |"
              for l in levels]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
