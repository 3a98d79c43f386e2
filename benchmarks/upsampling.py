"""Does the face step need to upsample small photos? dlib's HOG search as it is and upsampled
once, on the same photos: faces found, time, and how far apart the 5 landmarks land.

    python benchmarks/upsampling.py [--lfw 200] [--orl 96]

For each photo (a seeded sample of LFW deep-funneled 250x250 photos, and every fourth ORL
92x112 crop): dlib's HOG detector at upsample 0 and 1, then the 5-point landmarks of the largest
face each search found. The landmark gap is the largest distance between a landmark from one
search and the same landmark from the other, over the distance between the eye centres. facerank
searches as it is and upsamples only where that found nothing (``UPSAMPLE_BELOW``); this is the
measurement behind that rule. Writes benchmarks/results/upsampling.{json,md}.
Data: LFW (Huang et al. 2007) and the ORL face database (AT&T Laboratories Cambridge).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def measure(name: str, paths: list[Path], detector, landmarks) -> dict:
    found = {0: 0, 1: 0}
    seconds = {0: 0.0, 1: 0.0}
    gaps, widths = [], []
    for path in paths:
        pixels = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))
        largest = {}
        for upsample in (0, 1):
            started = time.perf_counter()
            boxes = detector.run(pixels, upsample, 0.0)[0]
            seconds[upsample] += time.perf_counter() - started
            if len(boxes):
                found[upsample] += 1
                largest[upsample] = max(boxes, key=lambda box: box.area())
        if len(largest) < 2:
            continue
        points = [np.array([(p.x, p.y) for p in landmarks(pixels, largest[u]).parts()], float)
                  for u in (0, 1)]
        eyes = np.linalg.norm(points[1][:2].mean(0) - points[1][2:4].mean(0))
        gaps.append(float(np.linalg.norm(points[0] - points[1], axis=1).max() / eyes))
        widths.append(largest[0].width())
    n = len(paths)
    return {"photos": name, "count": n,
            "found_as_is": found[0] / n, "found_upsampled": found[1] / n,
            "ms_as_is": 1000 * seconds[0] / n, "ms_upsampled": 1000 * seconds[1] / n,
            "compared": len(gaps),
            "landmark_gap_median": float(np.median(gaps)),
            "landmark_gap_p90": float(np.percentile(gaps, 90)),
            "landmark_gap_p99": float(np.percentile(gaps, 99)),
            "box_width_as_is_median": float(np.median(widths))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=int, default=200, help="LFW photos (seeded sample)")
    parser.add_argument("--orl", type=int, default=96, help="ORL photos (every fourth)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "upsampling")
    args = parser.parse_args()
    import dlib

    from facerank.faces.detection import landmark_model_path

    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(landmark_model_path()))
    lfw = sorted((DATA / "lfw").rglob("*.jpg"))
    orl = sorted((DATA / "orl").glob("*/*.pgm"))
    if not lfw or not orl:
        sys.exit(f"needs LFW and ORL under {DATA} (see its README)")
    rows = [measure("LFW deep-funneled 250x250", random.Random(0).sample(lfw, args.lfw),
                    detector, landmarks),
            measure("ORL 92x112", orl[::4][:args.orl], detector, landmarks)]
    results = {"cpu": cpu_model(), "dlib": dlib.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Upsampling before face detection ({results['cpu']}, dlib {results['dlib']})", "",
             "dlib's HOG search as it is (upsample 0) and upsampled once (1), one thread. "
             "Landmark gap: the largest distance between a landmark of one search's largest "
             "face and the same landmark of the other's, over the eye distance.", "",
             "| photos | n | face found as is | upsampled | ms as is | ms upsampled | "
             "landmark gap median | p90 | p99 | box width as is (median px) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['photos']} | {r['count']} | {r['found_as_is']:.1%} | "
              f"{r['found_upsampled']:.1%} | {r['ms_as_is']:.1f} | {r['ms_upsampled']:.1f} | "
              f"{r['landmark_gap_median']:.3f} | {r['landmark_gap_p90']:.3f} | "
              f"{r['landmark_gap_p99']:.3f} | {r['box_width_as_is_median']:.0f} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
