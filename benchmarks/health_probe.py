"""Polls a URL from a process of its own until its stdin closes; prints each poll as JSON.

    python benchmarks/health_probe.py http://127.0.0.1:8000/api/health [--every 0.01]

Prints ``polling`` once its connection is open, then, when stdin closes, one JSON list of
``{"status", "seconds"}``. A monitor polls a server from elsewhere: a thread inside the
process that makes the load would wait on that process's GIL behind the loading threads and
measure the load generator rather than the server (benchmarks/serve_load.py and
tests/test_serve_live.py both run this).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--every", type=float, default=0.01, help="seconds between polls")
    args = parser.parse_args()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    polls = []
    with httpx.Client(timeout=5) as client:
        client.get(args.url)  # connected before the load starts
        print("polling", flush=True)
        while not stop.is_set():
            started = time.perf_counter()
            status = client.get(args.url).status_code
            polls.append({"status": status, "seconds": time.perf_counter() - started})
            time.sleep(args.every)
    print(json.dumps(polls))


def start(url: str, every: float = 0.01):
    """The probe as a child process, once it is polling; ``stop(probe)`` gives its polls."""
    import subprocess

    probe = subprocess.Popen([sys.executable, __file__, url, "--every", str(every)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    if probe.stdout.readline().strip() != "polling":
        raise RuntimeError(f"the health probe did not start: {probe.communicate()[1]}")
    return probe


def stop(probe) -> list[dict]:
    """Close the probe's stdin (its signal to stop) and return its polls."""
    out, err = probe.communicate(input="", timeout=30)
    if probe.returncode != 0:
        raise RuntimeError(f"the health probe failed: {err}")
    return json.loads(out)


if __name__ == "__main__":
    main()
