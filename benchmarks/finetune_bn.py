"""Fine-tuning a face prior with batch norm frozen (the ``finetune`` recipe's default) or learning
from each batch (``--batch-bn``): accuracy, "unknown" answers and how far face prints blow up.

    python benchmarks/finetune_bn.py [--rounds 1]

Both ways from the same base (``face_prior.py``'s, built first), on ORL (40 people, 70/30 seed 0;
and its unknown-people protocol: 28 enrolled, 12 strangers) and on the 47 LFW View 1 test people
with >= 10 photos. "Blow-up" is the largest face print norm among the gallery's training photos,
embedded as queries are (eval mode, before L2 normalisation), over the median: with batch
statistics a few photos came out thousands of times longer than the rest, all pointing one way.
Writes ``results/finetune_bn.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


import face_prior as fp


def lfw_47(work: Path, **overrides) -> dict:
    gallery = fp.CACHE / "devtest-gallery"  # face_prior.py's lfw-identification stage made it
    trained = fp.from_base(gallery, work / "lfw-store", **overrides)
    return fp.scored(work / "lfw-store", trained)


def run(frozen_bn: bool) -> dict:
    work = fp.CACHE / "work" / f"bn-{'frozen' if frozen_bn else 'batch'}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    orl = fp.stage_orl(work, frozen_bn=frozen_bn)
    out = {"orl": orl, "orl_blow_up": fp.rec.blow_up(work / "unknown-store")}
    out["lfw_47"] = lfw_47(work, frozen_bn=frozen_bn)
    out["lfw_47_blow_up"] = fp.rec.blow_up(work / "lfw-store")
    out["seconds"] = round(time.perf_counter() - started, 1)
    shutil.rmtree(work, ignore_errors=True)
    return out


def report(results: dict) -> str:
    pct = fp.pct
    lines = ["# Fine-tuning a face prior: batch norm frozen or learning from each batch", "",
             f"{results['machine']}. Base: `{results['base']}` (from random initialisation). "
             f"Reproduce: `python benchmarks/finetune_bn.py{results['options']}`.", "",
             "| measure | frozen (`finetune` default) | batch statistics (`--batch-bn`) |",
             "|---|---|---|"]
    frozen, batch = results["frozen"], results["batch"]
    rows = [("ORL 40 people, classify top-1",
             lambda r: pct(r["orl"]["identification"]["classify"])),
            ("ORL 1-NN (closest)", lambda r: pct(r["orl"]["identification"]["closest"])),
            ("ORL strangers rejected (120 photos of 12 people never enrolled)",
             lambda r: pct(r["orl"]["unknown"]["strangers_rejected"])),
            ("ORL enrolled people's held-out photos accepted and named right",
             lambda r: pct(r["orl"]["unknown"]["enrolled_accepted_and_right"])),
            ("ORL unknown threshold (calibrated at 1% of stand-in strangers)",
             lambda r: f"{r['orl']['unknown']['calibration']['unknown_threshold']:.3f}"),
            ("ORL gallery: largest face print norm / median (photos over 10x)",
             lambda r: f"{r['orl_blow_up']['max_over_median']:,.1f} "
                       f"({r['orl_blow_up']['photos_over_10x']} of {r['orl_blow_up']['photos']})"),
            ("LFW 47 people, classify top-1", lambda r: pct(r["lfw_47"]["classify"])),
            ("LFW 47 people, 1-NN", lambda r: pct(r["lfw_47"]["closest"])),
            ("LFW gallery: largest face print norm / median (photos over 10x)",
             lambda r: f"{r['lfw_47_blow_up']['max_over_median']:,.1f} "
                       f"({r['lfw_47_blow_up']['photos_over_10x']} of "
                       f"{r['lfw_47_blow_up']['photos']})")]
    lines += [f"| {name} | {cell(frozen)} | {cell(batch)} |" for name, cell in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1,
                        help="use face_prior.py's base of this many rounds")
    parser.add_argument("--report", action="store_true", help="only rewrite the report")
    args = parser.parse_args()
    fp.BASE = fp.base_of_round(args.rounds)
    results_file = fp.RESULTS / "finetune_bn.json"
    if args.report:
        results = json.loads(results_file.read_text())
    else:
        if not (fp.BASE / "base.json").exists():
            raise SystemExit(f"no base at {fp.BASE}: run benchmarks/face_prior.py first")
        results = {"machine": fp.machine(), "base": str(fp.BASE.relative_to(fp.HERE.parent)),
                   "options": "" if args.rounds == 1 else f" --rounds {args.rounds}"}
        for name, frozen in (("frozen", True), ("batch", False)):
            print(f"== {name}", flush=True)
            results[name] = run(frozen)
            results_file.write_text(json.dumps(results, indent=1).replace(
                f"{fp.HERE.parent}/", ""))
    (fp.RESULTS / "finetune_bn.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
