"""How fast facerank embeds faces, beside this machine's hardware floor and the peer library.

    python benchmarks/embedding_speed.py           # full run (estimated 10-12 min, 2 quiet cores)
    python benchmarks/embedding_speed.py --quick   # a small grid, to check that it works

One run measures, each as the median of several timed repeats after a warm-up:

- the floor: a large matmul's GFLOP/s (fp32 and bf16), turned into images/s at each input size
  with ResNet50's FLOPs counted by ``torch.utils.flop_counter`` (2 FLOPs per multiply-add);
- the network alone (random weights: speed does not depend on their values) by input size,
  batch, backend and precision: torch eager fp32 (contiguous and channels_last), bf16 autocast,
  ONNX Runtime fp32 (exported here), and ``torch.compile`` where it compiles within a limit;
- glibc malloc at batch 32 with its default thresholds and with raised ones;
- the data path: decode + resize + normalise per image, one core;
- end to end: ``FaceStore.sync_folder`` indexing real LFW images (decode and hashing included);
- the peer, ``face_recognition`` (dlib), on the same LFW images, if it is installed.

The network rows run in interleaved rounds (every row once per round, the floor too), so a
neighbour's load shifts all rows alike and the ratios stay fair. Writes
benchmarks/results/embedding_speed.{json,md}. Data: LFW (Huang et al. 2007) and the ORL face
database (AT&T Laboratories Cambridge).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import importlib.resources
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from facerank.data.images import load_image
from facerank.model.torch_model import FaceModel
from facerank.model.config import ModelConfig
from facerank.model.network import build_network, features_and_logits

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples" / "gallery"
PEOPLE = 40  # head size of the timed network (ORL's 40 people); the head is 0.002% of the FLOPs
BACKENDS = {  # name: (what it is, compute precision)
    "eager": ("torch eager fp32, contiguous (NCHW)", "fp32"),
    "eager_cl": ("torch eager fp32, channels_last weights and input", "fp32"),
    # One thread: on a shared CPU each OpenMP barrier waits for a pre-empted thread, so one
    # thread can beat two; on a quiet machine this row shows the per-core rate.
    "eager_cl_1t": ("torch eager fp32, channels_last, 1 thread", "fp32"),
    "bf16_cl": ("torch bf16 autocast, channels_last", "bf16"),
    "ort": ("ONNX Runtime fp32 (CPU provider)", "fp32"),
    "compile": ("torch.compile fp32 (inductor, freezing)", "fp32"),
}


@dataclass(frozen=True)
class Plan:
    """What one run measures; ``--quick`` picks the small one."""

    grid: tuple[tuple[str, int, int], ...]  # (backend, size, batch) rows of the network table
    rounds: int                     # timed repeats per network row (interleaved rounds)
    min_seconds: float              # each repeat runs whole batches for at least this long
    compile_row: tuple[int, int] | None  # (size, batch) for torch.compile (a child process)
    malloc_row: tuple[int, int, int]  # (size, batch, timed passes) for the malloc comparison
    data_images: int                # images per data-path repeat
    e2e_images: tuple[tuple[int, int], ...]  # (model size, LFW images indexed) end to end
    peer_images: int                # LFW images per peer repeat
    repeats: int = 3                # repeats of the non-network rows


def _grid(rows: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]):
    return tuple((backend, size, batch) for backend, (sizes, batches) in rows.items()
                 for size in sizes for batch in batches)


FULL = Plan(
    grid=_grid({"eager": ((64, 112, 224), (1, 8, 32)), "eager_cl": ((64, 112, 224), (1, 8, 32)),
                # bf16 is emulated without AMX (several times slower): one batch size is enough
                "bf16_cl": ((64, 112, 224), (8,)), "ort": ((64, 112, 224), (1, 8, 32)),
                "eager_cl_1t": ((64, 224), (8,))}),
    rounds=5, min_seconds=1.0, compile_row=(224, 8), malloc_row=(224, 32, 3), data_images=200,
    # 2,000 images at the default size, 500 at 224 (3 repeats of 2,000 would take 5 minutes on
    # 2 cores); both are extrapolated to 10,000 images.
    e2e_images=((64, 2000), (224, 500)), peer_images=50)
QUICK = Plan(
    grid=_grid({"eager": ((64, 112), (1, 8)), "eager_cl": ((64, 112), (1, 8)),
                "bf16_cl": ((64,), (8,)), "ort": ((64, 112), (1, 8)), "eager_cl_1t": ((64,), (8,))})
    + (("eager", 224, 8), ("eager_cl", 224, 8), ("ort", 224, 8)),
    # No torch.compile: compiling alone takes over a minute of CPU.
    rounds=3, min_seconds=0.25, compile_row=None, malloc_row=(112, 32, 2), data_images=40,
    e2e_images=((64, 200), (224, 64)), peer_images=20)


class Embedder(nn.Module):
    """What every backend runs: facerank's forward pass (avg_pool features and logits)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor):
        return features_and_logits(self.network, pixels)


def timed_rate(step: Callable[[], object], images: int, min_seconds: float) -> float:
    """Images per second over whole calls of ``step`` lasting at least ``min_seconds``."""
    passes, started = 0, time.perf_counter()
    while True:
        step()
        passes += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return passes * images / elapsed


@contextlib.contextmanager
def threads_for(backend: str):
    """torch's intra-op threads for one row: 1 for the ``_1t`` rows, else the default."""
    default = torch.get_num_threads()
    torch.set_num_threads(1 if backend.endswith("_1t") else default)
    try:
        yield
    finally:
        torch.set_num_threads(default)


def summary(repeats: list[float]) -> dict:
    return {"median": float(np.median(repeats)), "min": float(min(repeats)),
            "max": float(max(repeats)), "repeats": [round(r, 4) for r in repeats]}


# -- machine and floor ----------------------------------------------------------------------------

def machine_info() -> dict:
    flags, model = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "glibc": "-".join(platform.libc_ver())}
    for name in ("torchvision", "onnx", "onnxruntime", "onnxscript", "dlib-bin", "dlib",
                 "face_recognition", "face_recognition_models"):
        try:  # from the installed metadata: importing face_recognition loads its models
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": model, "cores": os.cpu_count(), "machine": platform.machine(),
            "amx": sorted(f for f in flags if f.startswith("amx")),
            "avx512": sorted(f for f in flags if f.startswith("avx512")),
            "torch_amx_tile": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
            "torch_threads": torch.get_num_threads(), "versions": versions,
            "load_average_at_start": os.getloadavg()}


def dlib_build() -> dict:
    try:
        import dlib
    except ImportError:
        return {}
    return {name: getattr(dlib, name) for name in
            ("USE_AVX_INSTRUCTIONS", "DLIB_USE_BLAS", "DLIB_USE_LAPACK", "DLIB_USE_CUDA")
            if hasattr(dlib, name)}


def resnet_gflop(size: int) -> float:
    """GFLOP per image of the embedding forward pass at ``size`` x ``size`` (multiply-add = 2)."""
    network = Embedder(build_network(PEOPLE)).eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def matmul_gflops(dtype: torch.dtype, min_seconds: float, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return timed_rate(lambda: torch.mm(a, b), 1, min_seconds) * 2 * n ** 3 / 1e9


# -- the network alone --------------------------------------------------------------------------

def export_onnx(embedder: nn.Module, path: Path) -> dict:
    """Export once with dynamic batch and side; the torch.export-based exporter first."""
    example = torch.randn(2, 3, 64, 64)  # batch 2: a batch of 1 would be specialised away
    started, errors = time.perf_counter(), []
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if dynamo:
                    torch.onnx.export(embedder, (example,), str(path), dynamo=True,
                                      input_names=["pixels"], output_names=["features", "logits"],
                                      dynamic_shapes=({0: "batch", 2: "height", 3: "width"},),
                                      verbose=False)
                else:
                    torch.onnx.export(embedder, (example,), str(path), dynamo=False,
                                      input_names=["pixels"], output_names=["features", "logits"],
                                      dynamic_axes={"pixels": {0: "batch", 2: "height",
                                                               3: "width"}})
            return {"exporter": "dynamo (torch.export)" if dynamo else "legacy (TorchScript)",
                    "export_seconds": round(time.perf_counter() - started, 1),
                    "failed_first": errors}
        except Exception as error:  # record why, then try the other exporter
            errors.append(f"dynamo={dynamo}: {type(error).__name__}: {str(error)[:200]}")
    raise RuntimeError("both ONNX exporters failed: " + " | ".join(errors))


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same cores torch uses
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def network_rows(plan: Plan, gflop: dict[int, float], scratch: Path) -> tuple[list, dict, dict]:
    """The grid and the floor, timed in interleaved rounds: (rows, floor, onnx info)."""
    torch.manual_seed(0)
    embedder = Embedder(build_network(PEOPLE)).eval()
    embedder_cl = copy.deepcopy(embedder).to(memory_format=torch.channels_last)
    onnx_info, session = {"exporter": None}, None
    if any(backend == "ort" for backend, _, _ in plan.grid):
        try:
            onnx_info = export_onnx(embedder, scratch / "resnet50.onnx")
            session = ort_session(scratch / "resnet50.onnx")
        except Exception as error:  # ImportError or a failed export: the ORT rows are skipped
            onnx_info = {"exporter": None, "skipped": f"{type(error).__name__}: {error}"}

    def step_for(backend: str, size: int, batch: int):
        x = torch.randn(batch, 3, size, size)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        if backend == "eager":
            return lambda: embedder(x)
        if backend in ("eager_cl", "eager_cl_1t"):
            return lambda: embedder_cl(x_cl)
        if backend == "bf16_cl":
            def bf16():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return embedder_cl(x_cl)
            return bf16
        if backend == "ort":
            feed = {"pixels": x.numpy()}
            return lambda: session.run(None, feed)
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")

    grid = [row for row in plan.grid if row[0] != "ort" or session is not None]
    floor = {"fp32": [], "bf16": []}
    repeats: dict[tuple, list[float]] = {row: [] for row in grid}
    with torch.inference_mode():
        steps = {row: step_for(*row) for row in grid}
        if session is not None:  # the exported graph must compute what torch computes
            x = torch.randn(2, 3, 112, 112)
            ours, theirs = embedder(x)[0].numpy(), session.run(None, {"pixels": x.numpy()})[0]
            onnx_info["max_abs_diff_features"] = float(np.abs(ours - theirs).max())
        for row, step in steps.items():  # warm-up: oneDNN builds its kernels on first use
            with threads_for(row[0]):
                step(), step()
        for _ in range(plan.rounds):
            floor["fp32"].append(matmul_gflops(torch.float32, plan.min_seconds))
            floor["bf16"].append(matmul_gflops(torch.bfloat16, plan.min_seconds))
            for row, step in steps.items():
                with threads_for(row[0]):
                    repeats[row].append(timed_rate(step, row[2], plan.min_seconds))
    rows = [{"section": "network", "backend": backend, "what": BACKENDS[backend][0],
             "precision": BACKENDS[backend][1], "size": size, "batch": batch,
             "threads": 1 if backend.endswith("_1t") else torch.get_num_threads(),
             "unit": "images/s", **summary(repeats[(backend, size, batch)])}
            for backend, size, batch in grid]
    floor_info = {precision: {"gflops": summary(values),
                              "images_per_s": {str(s): float(np.median(values)) / g
                                               for s, g in gflop.items()}}
                  for precision, values in floor.items()}
    floor_info["matmul"] = "torch.mm of two 2048x2048 matrices, all torch threads"
    return rows, floor_info, onnx_info


def compile_row(plan: Plan, limit_s: float) -> dict:
    """torch.compile in a child process, so a compile that runs past the limit can be stopped."""
    size, batch = plan.compile_row
    row = {"section": "network", "backend": "compile", "what": BACKENDS["compile"][0],
           "precision": "fp32", "size": size, "batch": batch, "unit": "images/s"}
    budget = limit_s + plan.rounds * (plan.min_seconds + 2 * batch * resnet_gflop(size) / 20) + 60
    with tempfile.TemporaryDirectory() as cache:  # a cold cache: what a user's first run pays
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        try:
            done = subprocess.run([sys.executable, __file__, "--child-compile",
                                   json.dumps([size, batch, plan.rounds, plan.min_seconds])],
                                  env=env, capture_output=True, text=True, timeout=budget,
                                  check=False)
        except subprocess.TimeoutExpired:
            return {**row, "skipped": f"not finished within {budget:.0f} s (compile limit "
                                      f"{limit_s:.0f} s): skipped"}
    if done.returncode != 0:
        return {**row, "skipped": "compile failed: " + done.stderr.strip().splitlines()[-1][:300]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["compile_seconds"] > limit_s:
        return {**row, "compile_seconds": result["compile_seconds"],
                "skipped": f"compiling took {result['compile_seconds']:.0f} s > {limit_s:.0f} s"}
    return {**row, "compile_seconds": result["compile_seconds"], **summary(result["repeats"])}


def child_compile(spec: str) -> None:
    size, batch, rounds, min_seconds = json.loads(spec)
    import torch._inductor.config as inductor

    inductor.freezing = True  # fold weights into the graph: the recommended CPU inference mode
    compiled = torch.compile(Embedder(build_network(PEOPLE)).eval())
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        started = time.perf_counter()
        compiled(x)
        compile_seconds = time.perf_counter() - started
        compiled(x)
        repeats = [timed_rate(lambda: compiled(x), batch, min_seconds) for _ in range(rounds)]
    print(json.dumps({"compile_seconds": round(compile_seconds, 1), "repeats": repeats}))


# -- malloc -------------------------------------------------------------------------------------

# glibc's dynamic mmap threshold hands each large activation back to the kernel when it is freed,
# so every batch faults its memory in again (page zeroing = system time). Raising the mmap and
# trim thresholds keeps the memory in the heap. The environment variables are read by glibc at
# start-up; `mallopt(M_MMAP_THRESHOLD=-3 / M_TRIM_THRESHOLD=-1, ...)` via ctypes does the same
# from inside a running process.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def malloc_rows(plan: Plan) -> list[dict]:
    size, batch, passes = plan.malloc_row
    rows = []
    for setting in ("default", "tuned"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        if setting == "tuned":
            env.update(TUNED_MALLOC)
        done = subprocess.run([sys.executable, __file__, "--child-malloc",
                               json.dumps([size, batch, passes])],
                              env=env, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"section": "malloc", "setting": setting, "size": size, "batch": batch,
                     "backend": "eager_cl", "precision": "fp32",
                     "env": {k: env[k] for k in TUNED_MALLOC} if setting == "tuned" else {},
                     **result})
    return rows


def child_malloc(spec: str) -> None:
    size, batch, passes = json.loads(spec)
    network = Embedder(build_network(PEOPLE)).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        network(x)  # warm-up
        before, seconds = resource.getrusage(resource.RUSAGE_SELF), []
        for _ in range(passes):
            started = time.perf_counter()
            network(x)
            seconds.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "passes": passes, "wall_seconds_per_pass": summary(seconds),
        "images_per_s": batch / float(np.median(seconds)),
        "user_seconds": round(after.ru_utime - before.ru_utime, 3),
        "system_seconds": round(after.ru_stime - before.ru_stime, 3),
        "minor_page_faults": after.ru_minflt - before.ru_minflt}))


# -- data path, end to end, peer ------------------------------------------------------------------

def lfw_images(root: Path, count: int) -> list[Path]:
    """The first ``count`` LFW images, by person then file name (the same ones every run)."""
    found = []
    for person in sorted(p for p in (root / "images").iterdir() if p.is_dir()):
        found += sorted(person.glob("*.jpg"))
        if len(found) >= count:
            return found[:count]
    return found


def data_path_rows(plan: Plan, orl: list[Path], lfw: list[Path]) -> list[dict]:
    """ms per image: read + decode (facerank.data.images) + resize + normalise, on one core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    network, rows = build_network(2), []

    def decode(path: Path, size: int, draft: bool) -> Image.Image:
        if not draft:
            return load_image(path)
        image = Image.open(path)
        image.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale, >= size
        return load_image(image)

    try:
        for name, paths, draft in (("ORL PGM 92x112", orl, False), ("LFW JPEG 250x250", lfw, False),
                                   ("LFW JPEG 250x250, Image.draft", lfw, True)):
            for size in (64, 112, 224):
                model = FaceModel(network, ModelConfig(people=("a", "b"), image_size=size))
                for path in paths[:5]:  # warm-up (and the page cache)
                    model.normalise(model.pixels([decode(path, size, draft)]))
                repeats = []
                for _ in range(plan.repeats):
                    started = time.perf_counter()
                    for path in paths:
                        model.normalise(model.pixels([decode(path, size, draft)]))
                    repeats.append((time.perf_counter() - started) / len(paths) * 1000)
                rows.append({"section": "data", "what": name, "size": size, "images": len(paths),
                             "unit": "ms/image", **summary(repeats)})
    finally:
        torch.set_num_threads(threads)
    return rows


def end_to_end_rows(plan: Plan, lfw_root: Path, scratch: Path) -> list[dict]:
    """``FaceStore.sync_folder`` over a folder of LFW symlinks: decode, hash, embed, index, save."""
    from facerank.store import FaceStore
    from facerank.training.loop import train
    from facerank.training.recipes import preset

    # A tiny trained store (10 ORL people, 1 epoch at 64 px): speed does not depend on how well
    # it is trained. The 224 store is the same weights saved with image_size=224.
    template = scratch / "store-64"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train(EXAMPLES, template, preset("scratch", image_size=64, epochs=1, batch_size=8),
              weights="none")
    rows = []
    for size, count in plan.e2e_images:
        folder = scratch / f"store-{size}"
        if size != 64:
            model = FaceModel.load(template)
            model.config = replace(model.config, image_size=size)
            model.save(folder)
        gallery = scratch / f"gallery-{count}"
        if not gallery.exists():
            for path in lfw_images(lfw_root, count):
                (gallery / path.parent.name).mkdir(parents=True, exist_ok=True)
                (gallery / path.parent.name / path.name).symlink_to(path)
                path.read_bytes()  # into the page cache: time the work, not the disk
        seconds = []
        for attempt in range(plan.repeats):
            target = scratch / f"run-{size}-{attempt}"
            shutil.copytree(folder, target)
            started = time.perf_counter()
            report = FaceStore.open(target).sync_folder(gallery)
            seconds.append(time.perf_counter() - started)
            shutil.rmtree(target)
        rate = [report.added / s for s in seconds]
        rows.append({"section": "end_to_end", "size": size, "batch": 32, "images": report.added,
                     "skipped": len(report.skipped), "unit": "images/s", "seconds": seconds,
                     "extrapolated_seconds_10000": 10000 / float(np.median(rate)),
                     **summary(rate)})
    return rows


def import_face_recognition():
    """face_recognition, or None and why. face_recognition_models 0.3 imports pkg_resources,
    which setuptools >= 81 no longer ships: a two-line stand-in serves its one call."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, name: str(
            importlib.resources.files(package).joinpath(name))
        sys.modules["pkg_resources"] = shim
    try:
        import face_recognition
    except (ImportError, SystemExit) as error:  # its models package calls quit() when missing
        return None, (f"face_recognition is not importable ({error}); install it with `pip "
                      "install face_recognition --no-deps face_recognition_models dlib-bin`")
    return face_recognition, None


def peer_rows(plan: Plan, lfw: list[Path]) -> tuple[list[dict], str | None]:
    face_recognition, why = import_face_recognition()
    if face_recognition is None:
        return [], why
    images = [face_recognition.load_image_file(str(p)) for p in lfw]
    boxes, found = [], 0
    for image in images:  # the detector's box where it finds a face, else LFW's central crop
        located = face_recognition.face_locations(image)
        found += bool(located)
        boxes.append(max(located, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
                     if located else (62, 188, 188, 62))
    rows = []
    for name, encode in (
            ("face_recognition.face_encodings, HOG detector (as users run it)",
             lambda i: face_recognition.face_encodings(images[i])),
            ("face_recognition.face_encodings, face box given (encoding only)",
             lambda i: face_recognition.face_encodings(images[i],
                                                       known_face_locations=[boxes[i]]))):
        encode(0)  # warm-up
        repeats = []
        for _ in range(plan.repeats):
            started = time.perf_counter()
            for i in range(len(images)):
                encode(i)
            repeats.append(len(images) / (time.perf_counter() - started))
        rows.append({"section": "peer", "what": name, "images": len(images), "dlib": dlib_build(),
                     "faces_found_by_detector": found, "unit": "images/s", **summary(repeats)})
    return rows, None


# -- report ---------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    m, floor = results["machine"], results["floor"]
    peers = [r["median"] for r in results["peer"]] if results["peer"] else []
    lines = [f"# Embedding speed ({m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch "
             f"threads; AMX: {'yes' if m['amx'] else 'no'})", "",
             f"{'Quick' if results['quick'] else 'Full'} run; medians of "
             f"{results['plan']['rounds']} interleaved timed rounds after a warm-up (other rows: "
             f"{results['plan']['repeats']} repeats). torch {m['versions']['torch']}, "
             f"onnxruntime {m['versions']['onnxruntime']}, ONNX exporter: "
             f"{results['onnx'].get('exporter')}.", "",
             "## The floor: a large matmul on this machine, as images/s", "",
             "| size | ResNet50 GFLOP/image (counted) | fp32 floor img/s | bf16 floor img/s |",
             "|---|---|---|---|"]
    for size, gflop in results["gflop_per_image"].items():
        lines.append(f"| {size} | {gflop:.2f} | {floor['fp32']['images_per_s'][size]:.1f} | "
                     f"{floor['bf16']['images_per_s'][size]:.1f} |")
    lines += ["", f"Matmul: fp32 {floor['fp32']['gflops']['median']:.0f} GFLOP/s, bf16 "
              f"{floor['bf16']['gflops']['median']:.0f} GFLOP/s (medians).", "",
              "## Images per second", "",
              "% floor: of the matmul floor at that size and precision. × peer: over "
              "face_recognition with its detector / with the face box given.", "",
              "| row | size | batch | img/s (median) | min–max | % floor | × peer (detector) | "
              "× peer (box given) |", "|---|---|---|---|---|---|---|---|"]

    def ratios(row, floor_rate):
        share = f"{row['median'] / floor_rate:.0%}" if floor_rate else ""
        return share, *(f"{row['median'] / p:.1f}×" for p in peers), *[""] * (2 - len(peers))

    for row in results["network"]:
        if "skipped" in row:
            lines.append(f"| {row['what']} | {row['size']} | {row['batch']} | skipped: "
                         f"{row['skipped']} | | | | |")
            continue
        floor_rate = floor[row["precision"]]["images_per_s"][str(row["size"])]
        lines.append(f"| {row['what']} | {row['size']} | {row['batch']} | {row['median']:.1f} | "
                     f"{row['min']:.1f}–{row['max']:.1f} | " + " | ".join(ratios(row, floor_rate))
                     + " |")
    for row in results["end_to_end"]:  # % of the floor measured with the network rows
        floor_rate = floor["fp32"]["images_per_s"][str(row["size"])]
        lines.append(f"| end to end: `sync_folder`, {row['images']} LFW JPEGs (decode, sha256, "
                     f"embed, index, save) | {row['size']} | 32 | {row['median']:.1f} | "
                     f"{row['min']:.1f}–{row['max']:.1f} | " + " | ".join(ratios(row, floor_rate))
                     + " |")
    for row in results["peer"]:
        dlib = m["versions"]["dlib-bin"] or m["versions"]["dlib"]
        lines.append(f"| peer: {row['what']} ({row['images']} LFW images, dlib {dlib}) | 150 | 1 "
                     f"| {row['median']:.1f} | {row['min']:.1f}–{row['max']:.1f} | | | |")
    if results["peer_skipped"]:
        lines.append(f"| peer: skipped ({results['peer_skipped']}) | | | | | | | |")
    lines += ["", "## End to end, extrapolated to 10,000 images", "",
              "| model size | images timed | seconds (median) | 10,000 images (extrapolated) |",
              "|---|---|---|---|"]
    for row in results["end_to_end"]:
        lines.append(f"| {row['size']} | {row['images']} | {np.median(row['seconds']):.1f} | "
                     f"{row['extrapolated_seconds_10000']:.0f} s |")
    lines += ["", "## glibc malloc at batch 32 (eager fp32 channels_last, child processes)", "",
              "| malloc | size | wall s/batch (median) | img/s | user s | system s | minor page "
              "faults |", "|---|---|---|---|---|---|---|"]
    for row in results["malloc"]:
        setting = "default" if row["setting"] == "default" else \
            "MALLOC_MMAP_THRESHOLD_ = MALLOC_TRIM_THRESHOLD_ = 1 GiB"
        lines.append(f"| {setting} | {row['size']} | {row['wall_seconds_per_pass']['median']:.2f} "
                     f"| {row['images_per_s']:.1f} | {row['user_seconds']:.2f} | "
                     f"{row['system_seconds']:.2f} | {row['minor_page_faults']:,} |")
    lines += ["", "## Data path: read + decode + resize + normalise, one core (ms/image)", "",
              "| images | 64 | 112 | 224 |", "|---|---|---|---|"]
    by_what: dict[str, dict[int, float]] = {}
    for row in results["data"]:
        by_what.setdefault(row["what"], {})[row["size"]] = row["median"]
    for what, sizes in by_what.items():
        lines.append(f"| {what} | " + " | ".join(f"{sizes[s]:.2f}" for s in (64, 112, 224)) + " |")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small grid (a few minutes)")
    parser.add_argument("--orl", type=Path, default=DATA / "orl")
    parser.add_argument("--lfw", type=Path, default=DATA / "lfw")
    parser.add_argument("--compile-limit", type=float, default=120.0,
                        help="seconds torch.compile may take before its row is skipped")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "embedding_speed")
    parser.add_argument("--child-compile", help=argparse.SUPPRESS)
    parser.add_argument("--child-malloc", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_compile:
        return child_compile(args.child_compile)
    if args.child_malloc:
        return child_malloc(args.child_malloc)
    for folder in (args.orl, args.lfw / "images"):
        if not folder.is_dir():
            parser.error(f"{folder} is missing: pass --orl/--lfw to the ORL and LFW folders")
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    machine = machine_info()
    gflop = {str(size): resnet_gflop(size) for size in (64, 112, 224)}
    orl = sorted(args.orl.glob("s*/*.pgm"))[:plan.data_images]
    lfw = lfw_images(args.lfw, max(plan.data_images, plan.peer_images))
    notes = []
    if not machine["amx"]:
        notes.append("No AMX on this CPU: bf16 runs emulated (converted to fp32 inside oneDNN "
                     "and MKL), so its floor and its rows are slower than fp32. The bf16 fast "
                     "path needs AMX; it is reported here as measured, not as a target.")
    sections: dict[str, float] = {}

    def section(name: str, work: Callable[[], object]):
        print(f"{name} ...", flush=True)
        begun = time.perf_counter()
        try:
            return work()
        finally:
            sections[name] = round(time.perf_counter() - begun, 1)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        network, floor, onnx_info = section("network grid and floor", lambda: network_rows(
            plan, {int(k): v for k, v in gflop.items()}, scratch))
        if onnx_info.get("skipped"):
            notes.append(f"ONNX Runtime rows skipped: {onnx_info['skipped']}")
        if plan.compile_row is None:
            notes.append("torch.compile not timed in --quick (its compile alone takes over a "
                         "minute of CPU); the full run times it.")
        else:
            compiled = section("torch.compile (child process)",
                               lambda: compile_row(plan, args.compile_limit))
            network.append(compiled)
            if "skipped" in compiled:
                notes.append(f"torch.compile row skipped: {compiled['skipped']}")
            else:
                notes.append(f"torch.compile (inductor, freezing) compiled in "
                             f"{compiled['compile_seconds']:.0f} s with a cold cache.")
        malloc = section("malloc (child processes)", lambda: malloc_rows(plan))
        data = section("data path", lambda: data_path_rows(plan, orl, lfw[:plan.data_images]))
        end_to_end = section("end to end", lambda: end_to_end_rows(plan, args.lfw, scratch))
    peer, peer_skipped = section("peer", lambda: peer_rows(plan, lfw[:plan.peer_images]))
    if peer_skipped:
        notes.append(f"Peer rows skipped: {peer_skipped}")
    else:
        notes.append("face_recognition (dlib) runs its own ResNet on a 150x150 aligned chip; its "
                     "detector is HOG with one upsampling (its default). Its rows time encoding "
                     "of already decoded images; the data-path table gives decode cost.")
    notes.append("End to end = FaceStore.open + sync_folder from a fresh copy of a tiny trained "
                 "store (1 epoch, 10 ORL people; the 224 store is the same weights saved with "
                 "image_size 224), files in the page cache. 10,000-image times are extrapolated "
                 "linearly from the images timed.")
    notes.append("The network rows time facerank's forward pass (avg_pool features and logits) "
                 "on random inputs with random weights; speed does not depend on their values.")
    load = max(machine["load_average_at_start"][0], os.getloadavg()[0])
    if load > 0.5 * (os.cpu_count() or 1):
        notes.append(f"Load average up to {load:.1f} on {os.cpu_count()} cores during the run: "
                     "other work shared the CPU. Absolute figures are lower bounds; small "
                     "batches suffer most (each of torch's OpenMP barriers waits for a thread "
                     "that another process has pre-empted). Same-run ratios are fairer.")
    results = {"quick": args.quick, "machine": machine, "plan": asdict(plan),
               "gflop_per_image": gflop, "floor": floor, "onnx": onnx_info, "network": network,
               "malloc": malloc, "data": data, "end_to_end": end_to_end, "peer": peer,
               "peer_skipped": peer_skipped, "notes": notes, "section_seconds": sections,
               "load_average_at_end": os.getloadavg(),
               "run_seconds": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    print(f"({results['run_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
