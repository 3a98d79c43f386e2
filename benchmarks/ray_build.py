"""What Ray costs and gives on one machine: a gallery indexed locally and on a local Ray cluster.

    python benchmarks/ray_build.py [--people 40] [--repeats 2]          # ORL, 400 photos
    python benchmarks/ray_build.py --lfw 2000                           # LFW, 2,000 photos

The same ORL photos (``../shared/data/orl``, 40 people x 10 by default; or the first ``--lfw N``
LFW photos, people in name order: 250 x 250 JPEG news photos) are indexed into fresh
copies of one store, by the local build (``FaceStore.sync_folder``: two reader threads decode
and find faces while the network embeds) and by ``RayEngine`` with 1 and 2 embedding actors on a
local Ray cluster of this machine's CPUs. The builds alternate, ``--repeats`` rounds of each,
so that the machine's noise falls on all of them; each figure is the median. Reported: wall
seconds from ``sync_folder`` to its return (listing, embedding, commits, the index) and photos
per second; Ray's figures include starting its actors (each loads the model), not starting the
cluster, which is timed apart. The model is the demo store's (the bundled ORL subset, 64 px, one
epoch from random initialisation): only its cost per photo matters here.

Writes benchmarks/results/ray_build-{orl,lfw}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ORL = HERE.parent.parent / "shared" / "data" / "orl"
LFW = HERE.parent.parent / "shared" / "data" / "lfw" / "images"
GALLERY = HERE.parent / "examples" / "gallery"

from machine import cpu_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lfw", type=int, default=0, help="use the first N LFW photos")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    import ray

    from facerank.scale import RayEngine
    from facerank.scale.cluster import connect
    from facerank.store import FaceStore
    from facerank.training.loop import train
    from facerank.training.recipes import preset

    work = Path(tempfile.mkdtemp(prefix="ray-build-"))
    gallery = work / "gallery"
    if args.lfw:
        name, people = "lfw", []
        for person in sorted(LFW.iterdir()):
            if sum(1 for _ in gallery.glob("*/*")) >= args.lfw:
                break
            shutil.copytree(person, gallery / person.name)
            people.append(person)
        for extra in sorted(gallery.glob("*/*"))[args.lfw:]:
            extra.unlink()
    else:
        name = "orl"
        people = sorted(ORL.glob("s*"), key=lambda p: int(p.name[1:]))[:args.people]
        for person in people:
            shutil.copytree(person, gallery / person.name)
    photos = sum(1 for _ in gallery.glob("*/*"))
    model = work / "model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train(GALLERY, model, preset("scratch", epochs=1, image_size=64), weights="none")

    started = time.perf_counter()
    connect("local", num_cpus=os.cpu_count())
    cluster_start = time.perf_counter() - started

    ways = {"local": None, "ray, 1 worker": RayEngine(workers=1),
            "ray, 2 workers": RayEngine(workers=2)}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for round_number in range(args.repeats):
        for way, engine in ways.items():
            folder = work / f"store-{round_number}-{len(seconds[way])}-{way[:5]}"
            shutil.copytree(model, folder)
            store = FaceStore.open(folder)
            began = time.perf_counter()
            report = store.sync_folder(gallery, engine=engine)
            seconds[way].append(time.perf_counter() - began)
            assert report.added + len(report.skipped) == photos, report
            print(f"round {round_number + 1}: {way}: {seconds[way][-1]:.1f} s", flush=True)
            shutil.rmtree(folder)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    local = statistics.median(seconds["local"])
    rows = []
    for way, runs in seconds.items():
        median = statistics.median(runs)
        rows.append({"build": way, "seconds": runs, "median_s": round(median, 2),
                     "photos_per_s": round(photos / median, 1),
                     "time_vs_local": round(median / local, 2)})
    results = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
               "photos": photos, "people": len(people), "image_size": 64,
               "cluster_start_s": round(cluster_start, 1), "repeats": args.repeats,
               "ray_version": ray.__version__, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    results["gallery"] = name
    (args.out / f"ray_build-{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Local build against Ray on one machine ({cpu_model()}, {os.cpu_count()} cores)",
             "",
             f"{photos} {name.upper()} photos of {len(people)} people, 64 px model, face step "
             "on; medians "
             f"of {args.repeats} alternating rounds. Ray {ray.__version__}, a local cluster "
             f"(started once: {cluster_start:.1f} s, not counted below). Reproduce: "
             "`python benchmarks/ray_build.py`.", "",
             "| build | median s | photos/s | time vs local |", "|---|---|---|---|"]
    lines += [f"| {r['build']} | {r['median_s']} | {r['photos_per_s']} | "
              f"{r['time_vs_local']}x |" for r in rows]
    (args.out / f"ray_build-{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
