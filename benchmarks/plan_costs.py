"""Copy the measured figures that `facerank index plan` rests on into the package.

Reads benchmarks/results/index_scale.json (recall, latency, memory, train and add time per index
kind and size) and benchmarks/results/embedding_speed.json (end-to-end images/s of `sync_folder`
per image size) and writes facerank/scale/measured_costs.json, so that a plan made from an
installed wheel quotes the same numbers, traceable to the run that measured them.

    python benchmarks/plan_costs.py          # after re-running either benchmark
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDEX_SCALE = ROOT / "benchmarks" / "results" / "index_scale.json"
EMBEDDING_SPEED = ROOT / "benchmarks" / "results" / "embedding_speed.json"
OUTPUT = ROOT / "facerank" / "scale" / "measured_costs.json"


def measured_costs(index_scale: dict, embedding_speed: dict) -> dict:
    """The figures a plan needs, picked out of the two benchmark results as they are."""
    index = []
    for size in index_scale["sizes"]:
        for row in size["candidates"]:
            if "HNSW" in row["factory"]:
                continue  # measured for comparison, never chosen: HNSW cannot remove vectors
            index.append({
                "faces": size["size"], "real_faces": size["real"], "factory": row["factory"],
                "nprobe": row.get("nprobe", 0), "k_factor": row.get("k_factor_rf", 0),
                "p50_ms": row["p50_ms"], "recall_at_10": row["recall_at_10"],
                "top1_agreement": row["top1_agreement"], "index_bytes": row["index_bytes"],
                "train_s": row["train_s"], "add_s": row["add_s"]})
    embedding = [{"image_size": row["size"], "batch": row["batch"], "images": row["images"],
                  "images_per_second": round(row["median"], 1)}
                 for row in embedding_speed["end_to_end"]]
    machine = embedding_speed["machine"]
    return {
        "generated_by": "python benchmarks/plan_costs.py",
        "index": {"source": "benchmarks/results/index_scale.json",
                  "machine": index_scale["machine"], "k": index_scale["k"],
                  "latency": "single query, warm, p50", "rows": index},
        "embedding": {"source": "benchmarks/results/embedding_speed.json (end_to_end)",
                      "machine": f"{machine['cpu']}, {machine['cores']} cores",
                      "what": "FaceStore.open + sync_folder of LFW JPEGs: decode, sha256, "
                              "embed, index, save; one process on the whole machine",
                      "rows": embedding},
    }


def main() -> None:
    costs = measured_costs(json.loads(INDEX_SCALE.read_text()),
                           json.loads(EMBEDDING_SPEED.read_text()))
    OUTPUT.write_text(json.dumps(costs, indent=1) + "\n")
    print(f"wrote {OUTPUT.relative_to(ROOT)}: {len(costs['index']['rows'])} index rows, "
          f"{len(costs['embedding']['rows'])} embedding rows")


if __name__ == "__main__":
    main()
