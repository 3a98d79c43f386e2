"""Polls a URL from a process of its own until its stdin closes; prints each poll as JSON.

    python benchmarks/health_probe.py http://127.0.0.1:8000/api/health [--every 0.01]

Prints ``polling`` once its connection is open, then, when stdin closes, one JSON list of
``{"status", "started", "seconds"}`` (``started``: ``time.monotonic()``, comparable across
processes on one machine). A monitor polls a server from elsewhere: a thread inside the
process that makes the load would wait on that process's GIL behind the loading threads and
measure the load generator rather than the server (benchmarks/serve_load.py and
tests/test_serve_live.py both run this).
"""

from __future__ import annotations

import argparse
import json
import subprocess
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

    def poll(client: httpx.Client) -> None:
        started, clock = time.perf_counter(), time.monotonic()
        status = client.get(args.url).status_code
        polls.append({"status": status, "started": clock,
                      "seconds": time.perf_counter() - started})

    with httpx.Client(timeout=5) as client:
        poll(client)  # answered before the caller is told to start its load
        print("polling", flush=True)
        while not stop.is_set():
            time.sleep(args.every)
            poll(client)
    print(json.dumps(polls))


def start(url: str, every: float = 0.01):
    """The probe as a child process, once it is polling; ``stop(probe)`` gives its polls."""
    probe = subprocess.Popen([sys.executable, __file__, url, "--every", str(every)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    # Its first poll has a 5 s timeout: a probe that says nothing for 30 s is stuck.
    timer = threading.Timer(30, probe.kill)
    timer.start()
    try:
        if probe.stdout.readline().strip() != "polling":
            probe.kill()
            raise RuntimeError(f"the health probe did not start: {probe.communicate()[1]}")
    finally:
        timer.cancel()
    return probe


def stop(probe) -> list[dict]:
    """Close the probe's stdin (its signal to stop) and return its polls."""
    try:
        out, err = probe.communicate(input="", timeout=30)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        raise RuntimeError("the health probe did not stop within 30 s") from None
    if probe.returncode != 0:
        raise RuntimeError(f"the health probe failed: {err}")
    return json.loads(out)


if __name__ == "__main__":
    main()
