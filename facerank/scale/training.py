"""Data-parallel training on Ray Train: ``facerank.training.loop.train`` run as ``workers`` ranks of one
``DistributedDataParallel`` group (gloo on CPU, NCCL on GPU), with the same presets, and the
same store (model, checkpoint, history, curves, split) as local training.

>>> from facerank.scale.training import train_on_ray
>>> result = train_on_ray("gallery/", "faces/", preset("scratch"), weights="none", workers=4)
>>> result.workers, result.test_accuracy

Each rank reads the gallery and trains on every ``workers``-th image of each epoch's seeded
order, in batches of ``batch_size / workers``; rank 0 alone scores the held-out split and
writes the store, and this process then reads the run's history back from the store. On a
local cluster that is all one filesystem. On a cluster of several machines the gallery and the
store must be paths every node sees alike (a shared filesystem such as NFS): workers on other
machines read the gallery (and, with ``resume=True``, the checkpoint) from those paths.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from facerank.data.gallery import TRAIN_FOLDER
from facerank.scale.cluster import connect
from facerank.training.loop import HISTORY_FILE, TrainResult, check_workers
from facerank.training.recipes import TrainConfig, recipe


def train_on_ray(gallery: str | Path, store: str | Path, config: TrainConfig | None = None, *,
                 weights: str = "imagenet", workers: int = 2, gpus_per_worker: float = 0,
                 cpus_per_worker: int | None = None, address: str | None = "auto",
                 **options) -> TrainResult:
    """Train on ``workers`` Ray workers at once and save the model into ``store``.

    ``config`` and ``weights`` are those of ``facerank.training.loop.train``, and so are ``options``
    (``resume``, ``faces``, ``face_model``, ``no_face``, ``allow_base_mismatch``...).
    ``config.batch_size`` is the effective batch, split evenly among the workers (refused when
    it does not divide). ``gpus_per_worker`` > 0 trains on GPUs over NCCL, else on CPUs over
    gloo. ``cpus_per_worker`` (default: the cluster's CPUs shared evenly) is also each worker's
    torch thread count, so that workers do not oversubscribe the cores. ``address``: see
    ``facerank.scale.cluster.connect``.

    >>> train_on_ray("photos/", "faces/", weights="none", workers=4, gpus_per_worker=1,
    ...              address="ray://head:10001")
    """
    config = config or recipe(weights)
    check_workers(config, workers)
    ray = connect(address)
    from ray.train import RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchTrainer

    if cpus_per_worker is None:
        cpus_per_worker = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    store = Path(store).resolve()
    job = dict(gallery=str(Path(gallery).resolve()), store=str(store), config=config,
               weights=weights, threads=cpus_per_worker, options=options)
    # Ray Train keeps its run state under storage_path; facerank reports no Ray checkpoints
    # (its own is in the store), so a scratch folder on this machine does.
    scratch = tempfile.mkdtemp(prefix="facerank-ray-")
    try:
        TorchTrainer(_train_one_rank, train_loop_config=job,
                     scaling_config=ScalingConfig(num_workers=workers,
                                                  use_gpu=gpus_per_worker > 0,
                                                  resources_per_worker=resources),
                     run_config=RunConfig(name="facerank-train", storage_path=scratch)).fit()
    except WorkerGroupError as error:
        # The first rank's own error (a GalleryError, a ValueError...) says more than Ray's.
        failures = getattr(error, "worker_failures", None) or {}
        if failures:
            raise failures[min(failures)] from error
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return read_result(store)


def read_result(store: str | Path) -> TrainResult:
    """The ``TrainResult`` a training run wrote into ``store/train/history.json``."""
    saved = json.loads((Path(store) / TRAIN_FOLDER / HISTORY_FILE).read_text())
    fields = {field.name for field in dataclasses.fields(TrainResult)}
    result = TrainResult(**{k: v for k, v in saved.items() if k in fields})
    result.skipped = [tuple(pair) for pair in result.skipped]
    return result


def _train_one_rank(job: dict) -> None:
    """One Ray Train worker: the local training loop as one rank of the group Ray set up."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    from facerank.training.loop import train

    context = ray.train.get_context()
    torch.set_num_threads(job["threads"])
    os.environ["OMP_NUM_THREADS"] = str(job["threads"])
    device = get_device()
    train(job["gallery"], job["store"], job["config"], weights=job["weights"],
          rank=context.get_world_rank(), workers=context.get_world_size(),
          device=str(device) if device.type == "cuda" else "cpu", **job["options"])
