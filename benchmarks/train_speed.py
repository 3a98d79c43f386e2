"""How long a training epoch takes on ORL (280 training images), recipe by recipe, beside what
each recipe has learnt after the same number of epochs.

    python benchmarks/train_speed.py                  # full run (about 15 min on 2 quiet cores)
    python benchmarks/train_speed.py --quick          # 112 px, 2 epochs (about 4 min, quiet)
    python benchmarks/train_speed.py --baseline REV   # also time facerank/train.py as of git REV
    python benchmarks/train_speed.py --quick --only freeze,cached   # some rows only

Full run: 112 px (5 epochs, every row), 64 px (5 epochs) and 224 px (2 epochs, freeze rows).

Rows, each a real ``facerank.train`` run on ORL split 70/30 per person (280 train, 120 held out):

- ``scratch`` fp32 and ``scratch`` with bf16 autocast forced on (bf16 is only fast on CPUs
  with AMX; elsewhere oneDNN emulates it and it is slower: measured, not hidden);
- ``freeze`` (all frozen but layer4 + head), uncached, and with ``cached_features`` (the frozen
  stem..layer3 run once per image and augmented view; its one-off cost is its own column), with
  2 views and, in the full run, one view per epoch (no view repeats).

Seconds per epoch are the median of the epochs after the first (an epoch = its training steps
plus scoring the held-out images; checkpoints excluded). Held-out accuracy is the last epoch's
and the saved model's (the same epoch, unless the recipe keeps the best). ``--baseline REV``
loads ``facerank/train.py`` from that commit and runs ``scratch`` fp32 and ``freeze`` with it just before the current code, for a
before/after ratio from the same run. Writes benchmarks/results/train_speed.{json,md}.
Data: the ORL face database (AT&T Laboratories Cambridge; Samaria & Harter 1994).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import importlib

import torch

from machine import cpu_model

from facerank.training import loop as training, recipes

HERE = Path(__file__).resolve().parent
# What run() calls: this checkout's preset and train (a baseline module has both in one file).
CURRENT = types.SimpleNamespace(preset=recipes.preset, train=training.train)
REPO = HERE.parent
DEFAULT_ORL = REPO.parent / "shared" / "data" / "orl"


@dataclasses.dataclass(frozen=True)
class Row:
    key: str        # for --only
    label: str
    preset: str
    overrides: dict


def rows_for(size: int, epochs: int, *, quick: bool) -> list[Row]:
    """The recipes timed at one image size; the full run adds the no-repeat cached variant."""
    common = dict(image_size=size, epochs=epochs)
    rows = []
    if size != 224:  # a scratch epoch at 224 costs minutes: freeze rows only there
        rows.append(Row("scratch", "scratch fp32", "scratch", dict(common, bf16=False)))
    if size == 112:  # bf16 is ~3x slower without AMX: one size says it
        rows.append(Row("bf16", "scratch bf16 autocast", "scratch", dict(common, bf16=True)))
    rows += [Row("freeze", "freeze", "freeze", dict(common)),
             Row("cached", "freeze, cached features (2 views)", "freeze",
                 dict(common, cached_features=True, feature_views=2))]
    if size == 112 and not quick:
        rows.append(Row("cached-all", f"freeze, cached features ({epochs} views)", "freeze",
                        dict(common, cached_features=True, feature_views=epochs)))
    return rows


def baseline_module(revision: str):
    """``facerank/train.py`` as it was at ``revision``, imported under another name."""
    source = subprocess.run(["git", "show", f"{revision}:facerank/train.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    name = "facerank_train_baseline"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    exec(compile(source, f"{revision}:facerank/train.py", "exec"), module.__dict__)
    return module


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(module, row: Row, orl: Path, workdir: Path, weights: str, code: str) -> dict:
    config = module.preset(row.preset, **row.overrides)
    print(f"{code:8} {row.label} @ {config.image_size} px, {config.epochs} epochs ...", flush=True)
    started, cpu = time.perf_counter(), cpu_seconds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "training from random initialisation"
        result = module.train(orl, workdir / f"{code}-{row.preset}-{len(os.listdir(workdir))}",
                              config, weights=weights)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    epochs = [r["seconds"] for r in result.history]
    return {
        "code": code, "label": row.label, "preset": row.preset, "overrides": row.overrides,
        "image_size": config.image_size, "epochs": config.epochs,
        "batch_size": config.batch_size, "bf16": result.bf16,
        "epoch_seconds": epochs,
        "median_epoch_seconds": statistics.median(epochs[1:] or epochs),
        "first_epoch_seconds": epochs[0],
        "cache_seconds": getattr(result, "cache_seconds", None),
        "run_seconds": round(wall, 2), "run_cpu_seconds": round(cpu, 1),
        "last_val_accuracy": result.history[-1].get("val_accuracy"),
        "test_accuracy": result.test_accuracy, "kept_epoch": result.kept_epoch,
        "last_train_loss": result.history[-1]["train_loss"],
    }


def machine_info() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "amx": training.bf16_is_native(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_at_start": os.getloadavg()}


def percent(value) -> str:
    return "" if value is None else f"{value:.1%}"


def markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [f"# Training speed on ORL ({results['train_images']} training images, "
             f"{results['test_images']} held out)", "",
             f"{'Quick' if results['quick'] else 'Full'} run, weights `{results['weights']}`, "
             f"seed 0; {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} "
             f"torch threads, AMX: {'yes' if machine['amx'] else 'no'}; torch {machine['torch']}. "
             f"s/epoch = median of epochs 2..N (steps + held-out scoring).", ""]
    for size in results["sizes"]:
        rows = [r for r in results["rows"] if r["image_size"] == size and r["code"] == "current"]
        if not rows:
            continue
        reference = next((r for r in rows if r["label"] == "freeze"), rows[0])
        lines += [f"## {size} px", "",
                  "| recipe | batch | epochs | s/epoch | vs freeze | first epoch s | one-off "
                  "cache s | whole run s | held-out, last epoch | held-out, saved model |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            cache = "" if r["cache_seconds"] is None else f"{r['cache_seconds']:.1f}"
            lines.append(
                f"| {r['label']} | {r['batch_size']} | {r['epochs']} | "
                f"{r['median_epoch_seconds']:.2f} | "
                f"{r['median_epoch_seconds'] / reference['median_epoch_seconds']:.2f}x | "
                f"{r['first_epoch_seconds']:.2f} | {cache} | {r['run_seconds']:.0f} | "
                f"{percent(r['last_val_accuracy'])} | {percent(r['test_accuracy'])} |")
        lines.append("")
    if results["baseline"]:
        lines += [f"## Before / after (`facerank/train.py` at `{results['baseline']}` vs now)", "",
                  "| recipe | px | before s/epoch | after s/epoch | speed-up | before held-out | "
                  "after held-out |", "|---|---|---|---|---|---|---|"]
        for before in (r for r in results["rows"] if r["code"] == "baseline"):
            after = next(r for r in results["rows"] if r["code"] == "current"
                         and r["label"] == before["label"]
                         and r["image_size"] == before["image_size"])
            lines.append(f"| {before['label']} | {before['image_size']} | "
                         f"{before['median_epoch_seconds']:.2f} | "
                         f"{after['median_epoch_seconds']:.2f} | "
                         f"{before['median_epoch_seconds'] / after['median_epoch_seconds']:.2f}x "
                         f"| {percent(before['test_accuracy'])} | "
                         f"{percent(after['test_accuracy'])} |")
        lines.append("")
    lines += ["## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="112 px only, 2 epochs")
    parser.add_argument("--orl", type=Path, default=DEFAULT_ORL)
    parser.add_argument("--weights", default="none",
                        help="none (default: nothing to download), imagenet, or a weights file")
    parser.add_argument("--baseline", metavar="REV",
                        help="a git revision whose facerank/train.py to time as 'before'")
    parser.add_argument("--only", help="comma-separated rows to run (default: all) among "
                        "scratch, bf16, freeze, cached, cached-all")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "train_speed")
    args = parser.parse_args()
    if not args.orl.is_dir():
        parser.error(f"{args.orl} is missing: pass --orl to the ORL folder (s1..s40)")
    started = time.perf_counter()
    machine = machine_info()
    plan = [(112, 2)] if args.quick else [(112, 5), (64, 5), (224, 2)]
    baseline = baseline_module(args.baseline) if args.baseline else None
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        for size, epochs in plan:
            for row in rows_for(size, epochs, quick=args.quick):
                if args.only and row.key not in args.only.split(","):
                    continue
                # Before and after back to back, so a neighbour's load hits both alike.
                if baseline and size == 112 and row.key in ("scratch", "freeze"):
                    rows.append(run(baseline, row, args.orl, workdir, args.weights, "baseline"))
                rows.append(run(CURRENT, row, args.orl, workdir, args.weights, "current"))
    from facerank.data.gallery import scan_gallery, split_gallery

    split = split_gallery(scan_gallery(args.orl), test_fraction=0.3, seed=0)
    notes = []
    if not machine["amx"]:
        notes.append("No AMX on this CPU: bf16 autocast is emulated by oneDNN and slower than "
                     "fp32, which is why `scratch` only uses it where `torch.cpu` reports AMX.")
    if args.weights == "none":
        notes.append("Random initialisation (no ImageNet weights here): `freeze` trains layer4 "
                     "+ head over random frozen features, so its accuracy is far below what it "
                     "reaches from ImageNet weights; the speed figures do not depend on weights.")
    notes.append("Cached features: the views are drawn once, so with fewer views than epochs "
                 "each image's augmentations repeat; the one-off cache cost is not in any epoch.")
    load = max(machine["load_average_at_start"][0], os.getloadavg()[0])
    if load > 0.5 * (os.cpu_count() or 1):
        notes.append(f"Load average up to {load:.1f} on {os.cpu_count()} cores during the run: "
                     "other work shared the CPU, so absolute seconds are upper bounds and rows "
                     "run at different times may have met different loads.")
    results = {"quick": args.quick, "weights": args.weights, "machine": machine,
               "sizes": [size for size, _ in plan], "baseline": args.baseline,
               "train_images": len(split.train), "test_images": len(split.test),
               "rows": rows, "notes": notes, "load_average_at_end": os.getloadavg(),
               "run_seconds": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    print(f"({results['run_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
