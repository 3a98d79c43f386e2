"""The server as deployed: `facerank serve` in its own process, on a loopback socket.

A request body is refused at the limit while it streams in, and every /api/health answer (polled
from another process) comes within 100 ms while additions and queries keep the model busy. Also the refusal of `facerank serve`
to go beyond loopback without a token (in-process, nothing started).
"""

from __future__ import annotations

import importlib.util
import io
import json
import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import facerank  # noqa: E402
from facerank.cli.app import app as cli  # noqa: E402

TOKEN = "s3cret"
MAX_UPLOAD_MB = 1
# What the server lets a request body carry: two photos at the limit and multipart overhead.
BODY_LIMIT = 2 * MAX_UPLOAD_MB * 1024 * 1024 + 64 * 1024
MB = 1024 * 1024


class Live:
    def __init__(self, port: int, store: str):
        self.port, self.store = port, store
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
def live(store_copy, tmp_path):
    """`python -m facerank serve` on a free loopback port, over a private store copy."""
    store, _ = store_copy
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "server.log"
    with open(log, "wb") as stderr:
        # From the folder holding the facerank these tests import: the same code is served.
        server = subprocess.Popen(
            [sys.executable, "-m", "facerank", "serve", "--store", str(store.folder),
             "--port", str(port), "--token", TOKEN, "--max-upload-mb", str(MAX_UPLOAD_MB)],
            cwd=Path(facerank.__file__).parents[1], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"server exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"server did not start: {log.read_text()}"
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield Live(port, store.folder.name)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout if it never
    does: it would be waiting for the rest of the body)."""
    answer = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:  # closed with our unread bytes in its buffer: a reset
            return answer
        if not data:
            return answer
        answer += data


@pytest.mark.parametrize("framing", ["chunked", "declared length"])
def test_a_40_mb_upload_is_refused_at_the_limit_as_it_streams(live, framing):
    boundary = "facerank-test-boundary"
    length = ("Transfer-Encoding: chunked" if framing == "chunked"
              else f"Content-Length: {40 * MB + 1024}")
    head = (f"POST /api/stores/{live.store}/identify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n{length}\r\n\r\n").encode()
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; "
            "filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    frame = _chunk if framing == "chunked" else (lambda data: data)
    block = bytes(256 * 1024)
    sent = 0
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(head + frame(part))
        try:
            while sent < 40 * MB:
                sock.sendall(frame(block))
                sent += len(block)
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered: stop sending, as a client would
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        answer = _read_until_closed(sock)
    status, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413"), answer[:500]
    assert b"connection: close" in headers.lower()
    assert "request body larger than" in json.loads(body)["detail"]
    # Refused long before the 40 MB were sent. What was sent includes what the kernel's socket
    # buffers took on both sides (a few MB at most on loopback) while the server stopped reading.
    assert sent < BODY_LIMIT + 8 * MB, sent
    if framing == "declared length":
        assert sent < 8 * MB  # refused before a byte of the body was read
    assert httpx.get(f"{live.url}/api/health", timeout=5).json()["status"] == "ok"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _health_probe():
    """benchmarks/health_probe.py: health polled from a process of its own."""
    spec = importlib.util.spec_from_file_location(
        "health_probe", Path(__file__).parents[1] / "benchmarks" / "health_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_health_answers_within_100_ms_while_8_additions_and_16_queries_run(live, store_copy):
    _, gallery = store_copy
    base = f"{live.url}/api/stores/{live.store}"
    closest = f"{base}/closest?k=1"
    queries = [(person, f"{n}.pgm") for person in ("s1", "s2", "s3", "s4") for n in (1, 3, 5, 7)]
    # Mirrored photos of s5: new images, nearest none of the queried ones.
    newcomers = [_png(Image.open(gallery / "s5" / f"{n}.pgm").transpose(Image.FLIP_LEFT_RIGHT))
                 for n in range(1, 9)]

    # One client for every loading thread: a client per request would build an SSL context
    # each time (~10 ms of CPU), and on 2 cores the test's own CPU would delay the server.
    loader = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=32))

    def query(item):
        person, file = item
        photo = (gallery / person / file).read_bytes()
        answer = loader.post(closest, files={"photo": (file, photo)})
        assert answer.status_code == 200, answer.text
        nearest = answer.json()["matches"][0]
        return nearest["person"], Path(nearest["path"]).name

    def add_one(data, person="late"):
        answer = loader.post(f"{base}/people/{person}/images",
                             files=[("photos", ("new.png", data, "image/png"))],
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200, answer.text  # queued writers, no 409
        return answer.json()["added"]

    # Warm-up, as any server gets in its first minute: the first requests load the network and
    # a face detector for each concurrent caller (dlib holds the GIL for ~60 ms while loading
    # one), and FastAPI reads each endpoint's source on its first request. The test is of
    # serving, not of that one-off start-up.
    with ThreadPoolExecutor(8) as pool:
        early = pool.submit(add_one, _png(Image.open(gallery / "s3" / "9.pgm").rotate(10)),
                            "early")
        list(pool.map(query, queries[:6]))
        early.result()

    # The health checks come from a process of their own, as a monitor's would: polled from a
    # thread of this process, they would wait on this process's GIL behind the 24 loading
    # threads, and measure the test rather than the server.
    probe = _health_probe()
    prober = probe.start(f"{live.url}/api/health")
    started, load_start = time.perf_counter(), time.monotonic()
    try:
        with ThreadPoolExecutor(24) as pool:
            writes = [pool.submit(add_one, data) for data in newcomers]
            reads = [pool.submit(query, item) for item in queries]
            added = [w.result() for w in writes]
            nearest = [r.result() for r in reads]
    finally:
        busy, load_end = time.perf_counter() - started, time.monotonic()
        loader.close()
        polls = probe.stop(prober)
    latencies, statuses = [p["seconds"] for p in polls], {p["status"] for p in polls}
    ordered = sorted(latencies)
    worst, typical = ordered[-1], ordered[len(ordered) // 2]
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    print(f"\nhealth under load: {len(latencies)} polls over {busy:.2f} s, "
          f"median {typical * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    assert statuses == {200} and added == [1] * 8
    assert nearest == queries
    # Polled all through the load: from before it began to after it ended, never pausing long.
    starts = [p["started"] for p in polls]
    assert starts[0] <= load_start and starts[-1] + latencies[-1] >= load_end, (starts, busy)
    assert max(b - a for a, b in zip(starts, starts[1:])) < 0.15
    assert worst < 0.1, f"health took {worst * 1000:.0f} ms under load ({ordered[-5:]})"
    info = httpx.get(base, timeout=30).json()
    assert info["images"] == 59 and info["images_per_person"]["late"] == 8


# -- `facerank serve` refusing to expose a store without a token --------------------------------

runner = CliRunner()


@pytest.fixture
def started(monkeypatch):
    """Records what `facerank serve` would build and run, building and running nothing."""
    import uvicorn

    import facerank.serve

    calls = {}
    for variable in ("FACERANK_TOKEN", "FACERANK_READ_TOKEN"):
        monkeypatch.delenv(variable, raising=False)  # the tokens come from the options only
    monkeypatch.setattr(facerank.serve, "create_app",
                        lambda folders, **options: calls.update(app=(folders, options)) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.update(run=(app, options)))
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "faces.example.org"])
def test_serve_refuses_an_open_address_without_a_token(started, tmp_path, host):
    result = runner.invoke(cli, ["serve", "--store", str(tmp_path), "--host", host])
    assert result.exit_code == 2, result.output
    assert f"refusing to serve on {host} without a token" in result.output
    assert "--token" in result.output and "--insecure-no-token" in result.output
    assert started == {}  # refused before anything was built


@pytest.mark.parametrize("options,warned", [
    (["--host", "0.0.0.0", "--insecure-no-token"], True),
    (["--host", "0.0.0.0", "--token", "t", "--read-token", "r"], False),
    (["--host", "127.0.0.1"], False),
    (["--host", "::1"], False),
    (["--host", "localhost"], False),
])
def test_serve_starts_on_loopback_with_a_token_or_when_told_to(started, tmp_path, options,
                                                               warned):
    result = runner.invoke(cli, ["serve", "--store", str(tmp_path), "--max-concurrent", "3",
                                 *options])
    assert result.exit_code == 0, result.output
    assert ("warning: serving on 0.0.0.0 without a token" in result.output) == warned
    folders, settings = started["app"]
    assert folders == [tmp_path] and settings["max_concurrent"] == 3
    token = options[options.index("--token") + 1] if "--token" in options else None
    read = options[options.index("--read-token") + 1] if "--read-token" in options else None
    assert (settings["token"], settings["read_token"]) == (token, read)
    assert started["run"] == ("app", {"host": options[1], "port": 8000, "log_level": "warning"})
