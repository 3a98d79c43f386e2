"""``facerank index ...``: build, change, tune, plan, export and inspect a store's index.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from facerank.cli.common import (JsonOption, StoreOption, emit_json, handles_errors, report_faces,
                                 report_skipped, store_path)
from facerank.errors import UsageError


@handles_errors
def build(
    gallery: str = typer.Argument(..., help="One-folder-per-person gallery to index: a folder, "
                                  "or with --ray any URI Ray can read (s3://bucket/photos/)."),
    store: Optional[Path] = StoreOption,
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Embed and build the index on a Ray cluster: auto (the one on this "
        "machine, else a new local one), ray://HOST:PORT or HOST:PORT.", show_default=False),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="With --ray: embedding actors, one model each (default: "
        "as many as the cluster's CPUs, or GPUs with --gpus-per-worker, allow).",
        show_default=False),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", min=0,
                                          help="With --ray: GPUs per embedding actor."),
    memory: Optional[str] = typer.Option(
        None, "--memory", help="Memory budget of the index (512M, 4G, 1.5T); kept for later "
        "writes. The index kind is chosen within it, then its search parameters are tuned."),
    target_recall: Optional[float] = typer.Option(
        None, "--target-recall", help="Tune for the fastest search with this recall@10 against "
        "exact search (default 0.95 when tuning)."),
    target_latency: Optional[str] = typer.Option(
        None, "--target-latency", help="Tune for the most accurate search within this p50 "
        "latency (5ms, 500us)."),
    as_json: bool = JsonOption,
):
    """Embed every image of GALLERY into the store's index.

    Re-running embeds only new or changed files and drops deleted ones. With --memory or a
    target, the index is chosen within the budget and its search parameters tuned against
    exact search on 200 stored faces.

    Examples:
      facerank index build photos/ --store faces/ --memory 4G --target-recall 0.95
      facerank index build s3://bucket/photos/ --store faces/ --ray ray://head:10001 --workers 8
    """
    from facerank.store import FaceStore
    from facerank.units import parse_latency, parse_size

    tuning_asked = memory is not None or target_recall is not None or target_latency is not None
    if memory is not None:
        parse_size(memory)  # a badly written size fails before any work
    latency = parse_latency(target_latency) if target_latency is not None else None
    from facerank.data.sources import is_uri

    engine = None
    if ray is not None:
        from facerank.scale import RayEngine

        engine = RayEngine(address=ray, workers=workers, gpus_per_worker=gpus_per_worker)
    elif workers is not None or gpus_per_worker:
        raise typer.BadParameter("--workers and --gpus-per-worker size a Ray build: add --ray "
                                 "auto (or --ray ray://HOST:PORT)")
    elif is_uri(gallery):
        raise typer.BadParameter(f"{gallery} is a URI: read it on a Ray cluster with --ray auto "
                                 "(or copy it to a local folder)")
    opened = FaceStore.open(store_path(store))
    report = opened.sync_folder(gallery, show_progress=not as_json, memory=memory, engine=engine)
    tuning = (opened.tune_index(target_recall=target_recall, target_latency_ms=latency)
              if tuning_asked else None)
    if as_json:
        emit_json({**report.to_json(), "images": len(opened),
                    "index_factory": opened.info()["index_factory"],
                    "tuning": None if tuning is None else tuning.to_json()})
        return
    _print_change(report, opened, as_json)
    if tuning is not None:
        typer.echo(_describe_tuning(opened.info()["index_factory"], tuning.to_json()))


def _describe_tuning(factory: str, tuning: dict | None) -> str:
    if not tuning or not tuning.get("parameters"):
        return f"index {factory}: exact search (or still gathering vectors to train on), " \
               "nothing to tune"
    parameters = ", ".join(f"{name}={value}" for name, value in tuning["parameters"].items())
    targets = []
    if tuning.get("target_recall"):
        targets.append(f"recall@{tuning['k']} >= {tuning['target_recall']}")
    if tuning.get("target_latency_ms"):
        targets.append(f"p50 <= {tuning['target_latency_ms']:g} ms")
    return (f"index {factory}: tuned {parameters}: recall@{tuning['k']} {tuning['recall']:.3f}, "
            f"p50 {tuning['p50_ms']:.2f} ms over {tuning['queries']} stored faces against exact "
            f"search ({' and '.join(targets)}: {'met' if tuning['met'] else 'NOT met'})")


@handles_errors
def plan(
    faces: int = typer.Option(..., "--faces", help="How many faces to plan for."),
    memory: str = typer.Option("2G", "--memory", help="Index memory per node (512M, 64G)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="Embedding size (default: the "
                                      "store's, else 2048).", show_default=False),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Model input size in "
                                             "px (default: the store's, else 64).",
                                             show_default=False),
    hours: Optional[float] = typer.Option(None, "--hours", help="Build within this many hours: "
                                          "how many embedding workers that takes."),
    store: Optional[Path] = typer.Option(None, "--store", "-s", help="Take --dim and "
                                         "--image-size from this store.", show_default=False),
    as_json: bool = JsonOption,
):
    """Plan a gallery this machine does not hold: index kind, shards, memory, expected recall
    and latency, embedding hours and nodes, from measured figures.

    Example:  facerank index plan --faces 100000000 --memory 64G --hours 24
    """
    from facerank.scale.plan import plan_scale
    from facerank.units import format_size, parse_size

    if store is not None:
        from facerank.model.config import read_config

        config = read_config(store)
        dim = dim or config.embedding_dim
        image_size = image_size or config.image_size
    plan = plan_scale(faces, memory_budget_bytes=parse_size(memory), dim=dim or 2048,
                      image_size=image_size or 64, hours=hours)
    if as_json:
        emit_json(plan.to_json())
        return
    measured = plan.measured
    say = typer.echo
    say(f"{plan.faces:,} faces of {plan.dim}-d, at most {format_size(plan.memory_budget_bytes)} "
        "of index per node")
    say(f"  index      {plan.shards} shard(s) of {plan.faces_per_shard:,} faces, each "
        f"{plan.factory} (nprobe {plan.nprobe}" + (f", k_factor {plan.k_factor}"
                                                  if plan.k_factor else "") + ")")
    say(f"  memory     {format_size(plan.memory_per_shard_bytes)} per shard, "
        f"{format_size(plan.memory_total_bytes)} in all")
    say(f"  expected   recall@10 {plan.expected_recall:.3f}, p50 {plan.expected_p50_ms:g} ms per "
        f"shard (queries ask every shard at once)")
    say(f"  measured   {measured['faces']:,} faces, {measured['factory']}: recall@10 "
        f"{measured['recall_at_10']:.3f}, p50 {measured['p50_ms']:g} ms"
        + ("; extrapolated to the shard size (p50 scaled by the vectors a query scans)"
           if plan.extrapolated else ""))
    say(f"  embedding  {plan.embedding_hours:,.1f} h on one worker at "
        f"{plan.images_per_second_per_worker:g} images/s ({plan.image_size} px, measured end "
        f"to end on {plan.worker})")
    say(f"  index      train {plan.train_hours:g} h once, fill {plan.add_hours_per_shard:g} h per "
        "shard (shards in parallel; extrapolated)")
    goal = f" to finish within {plan.hours:g} h" if plan.hours else ""
    say(f"  nodes      {plan.nodes} ({plan.shards} holding shards, {plan.workers} embedding"
        f"{goal}): about {plan.build_hours:,.1f} h to build")
    say(f"  why        {plan.reason}")
    say(f"  figures    {plan.sources['index']}; {plan.sources['embedding']}")


@handles_errors
def add(
    images: List[Path] = typer.Argument(..., help="Image files, folders (every image in them, "
                                        "recursively) or quoted globs ('new/ada_*.jpg')."),
    person: str = typer.Option(..., "--person", "-p", help="Who they show (new or existing)."),
    store: Optional[Path] = StoreOption,
    as_json: bool = JsonOption,
):
    """Add images of one person to the index, without rebuilding it.

    Examples:
      facerank index add new/ada_1.jpg new/ada_2.jpg --person ada --store faces/
      facerank index add new/ada/ --person ada --store faces/
    """
    from facerank.data.photos import expand_photos
    from facerank.store import FaceStore

    opened = FaceStore.open(store_path(store))
    report = opened.add(expand_photos(images), person=person, show_progress=not as_json)
    _print_change(report, opened, as_json)


@handles_errors
def remove(
    paths: Optional[List[Path]] = typer.Argument(None, help="Indexed image files to remove."),
    person: Optional[str] = typer.Option(None, "--person", "-p", help="Remove all of a person."),
    ids: Optional[List[int]] = typer.Option(None, "--id", help="Record id to remove (repeatable)."),
    store: Optional[Path] = StoreOption,
    as_json: bool = JsonOption,
):
    """Remove images (by path or id) or a whole person from the index.

    Example:  facerank index remove --person ada --store faces/
    """
    from facerank.store import FaceStore

    if not paths and person is None and not ids:
        raise UsageError("say what to remove: image paths, --person NAME or --id N")
    opened = FaceStore.open(store_path(store))
    report = opened.remove(ids=ids or (), paths=paths or (), person=person)
    _print_change(report, opened, as_json)


@handles_errors
def export(
    out: Path = typer.Argument(..., help="The Parquet file to write."),
    store: Optional[Path] = StoreOption,
    as_json: bool = JsonOption,
):
    """Write every indexed face (id, path, person, sha256, vector) to one Parquet file, for
    another vector store or a data tool to load. The model's identity is in its metadata.

    Example:  facerank index export faces.parquet --store faces/
    """
    from facerank.store import FaceStore

    rows = FaceStore.open(store_path(store)).export_parquet(out)
    if as_json:
        emit_json({"path": str(out), "rows": rows})
    else:
        typer.echo(f"wrote {rows} faces to {out}")


@handles_errors
def info(store: Optional[Path] = StoreOption, as_json: bool = JsonOption):
    """Describe a store: model, preprocessing, index size, images per person.

    Example:  facerank index info --store faces/ --json
    """
    from facerank.store import FaceStore

    info = FaceStore.open(store_path(store)).info()
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        if key not in ("images_per_person", "index_tuning", "threshold", "threshold_far",
                       "unknown_threshold", "calibrated_gallery_images"):
            typer.echo(f"{key:>22}: {value}")
    typer.echo(f"{'threshold':>22}: " + (
        "not calibrated; run `facerank calibrate`" if info["threshold"] is None else
        f"{info['threshold']:.4f} (calibrated at a false-accept rate of "
        f"{info['threshold_far'] * 100:g}%)"))
    if info["threshold"] is not None:
        typer.echo(f"{'unknown_threshold':>22}: " + (
            "the pair threshold (no indexed gallery was searched when it was calibrated; "
            "calibrate again)"
            if info["unknown_threshold"] is None else
            f"{info['unknown_threshold']:.4f} from the nearest gallery image (calibrated on "
            f"{info['calibrated_gallery_images']} gallery images)"))
    if info.get("index_tuning"):
        typer.echo(f"{'index_tuning':>22}: "
                   f"{_describe_tuning(info['index_factory'], info['index_tuning'])}")
    counts = info["images_per_person"]
    if counts:
        shown = ", ".join(f"{p} ({n})" for p, n in list(counts.items())[:10])
        typer.echo(f"{'people':>22}: {shown}{' ...' if len(counts) > 10 else ''}")


def _print_change(report, opened, as_json: bool) -> None:
    if as_json:
        emit_json({**report.to_json(), "images": len(opened)})
        return
    report_skipped(report.skipped)
    step = opened.model.config.faces
    report_faces(report.no_face, report.several_faces, whole=step.no_face == "whole")
    typer.echo(f"added {report.added}, updated {report.updated}, removed {report.removed}, "
               f"unchanged {report.unchanged}, re-embedded {report.reembedded}; "
               f"the index holds {len(opened)} images")
