"""Embedding a gallery on a Ray cluster: Ray Data reads, decodes, finds faces and embeds in an
actor pool; the driver commits the vectors into the store as they stream back.

    >>> from facerank.scale import RayEngine
    >>> store.sync_folder("s3://bucket/photos/", engine=RayEngine(workers=8, gpus_per_worker=1))

Each actor holds one copy of the store's model, sent to it through Ray's object store (the
cluster needs no access to the store's folder) and run by the store's runtime (ONNX Runtime or
torch, as ``facerank.model.runtime`` picks; torch on a GPU where ``gpus_per_worker`` asks for one). The
driver commits every ``commit_every`` results in one transaction, exactly as a local build does:
records and vectors, files that could not be read or held no face reported in the change report,
moved files found again by content. A re-run embeds only files not committed yet (the same
size-and-time check as a local build), so a build interrupted anywhere resumes where it stopped;
a worker that dies is restarted by Ray and its batch retried, and a file's record is keyed by its
path, so nothing is lost or doubled. The index is built once at the end
(``facerank.scale.index_build``) and switched to in one transaction.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from facerank.model.config import CONFIG_FILE, read_config
from facerank.errors import GalleryError, ImageError, StoreError, UsageError
from facerank.faces.detection import FaceFinder
from facerank.data.gallery import Gallery, GalleryImage, scan_gallery
from facerank.data.images import IMAGE_SUFFIXES, load_image
from facerank.progress import Progress
from facerank.scale.cluster import connect, import_ray
from facerank.scale.index_build import SHARD_SIZE, build_index_file_on_ray
from facerank.data.sources import is_uri, read_source, split_uri
from facerank.store.ingest import (NO_FACE, FileOutcome, PendingFile, Writer,
                                   settle_known_content)

#: Images an actor embeds at once (one batch of the network).
EMBED_BATCH = 32
#: Results per transaction on the driver: more than a local build's 32, since the driver only
#: writes (the embedding happens elsewhere) and each commit costs an fsync or two.
COMMIT_EVERY = 256
#: Files per Ray Data block: what one actor task holds, and what a dead actor's retry redoes.
BLOCK_FILES = 1024
#: Restarts of a dead actor, and retries of its task, before the build fails (Ray Data's own
#: default retries forever: one file that kills its worker every time would never end).
RETRIES = 3


@dataclass
class RayEngine:
    """Embed and build the index on a Ray cluster (see the module's docstring).

    ``address``: ``"auto"`` joins the cluster on this machine or starts one; ``"ray://head:10001"``
    joins a remote one. ``workers``: embedding actors, one model each (default: as many as the
    cluster's GPUs or CPUs allow at ``gpus_per_worker``/``cpus_per_worker`` each).
    ``gpus_per_worker``: GPUs each actor asks Ray for (0: CPUs only); ``cpus_per_worker``: CPUs
    each asks for, and the threads its model uses.
    """

    address: str | None = "auto"
    workers: int | None = None
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1
    batch_size: int = EMBED_BATCH
    commit_every: int = COMMIT_EVERY
    shard_size: int = SHARD_SIZE
    _listed: dict = field(default_factory=dict, init=False, repr=False)
    _root: str = field(default="", init=False, repr=False)
    _filesystem: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise UsageError(f"gpus_per_worker must be at least 0 and cpus_per_worker above 0; "
                             f"got {self.gpus_per_worker} and {self.cpus_per_worker}")
        import_ray()  # no ray: say which extra to install before any work

    # -- what a write asks of an engine ----------------------------------------------------------

    def scan(self, gallery: str | Path) -> Gallery:
        """The gallery's images: a local folder as ``scan_gallery`` lists it, or any URI
        pyarrow reads (``s3://``, ``gs://``, ``file://`` ...), listed through pyarrow."""
        self._listed, self._root, self._filesystem = {}, "", None
        if not is_uri(str(gallery)):
            return scan_gallery(gallery)
        return self._scan_uri(str(gallery))

    def stat(self, path: str | Path):
        if is_uri(str(path)):
            if str(path) not in self._listed:
                raise OSError(f"{path}: not in the gallery's listing")
            return _Stat(*self._listed[str(path)])  # as listed: no request per file
        return os.stat(path)

    def exists(self, path: str) -> bool:
        if not is_uri(path):
            return os.path.exists(path)
        # Gone only if it lies under the gallery just listed and was not listed.
        return path in self._listed or not (self._root and path.startswith(self._root))

    def embed(self, writer: Writer, items: list[PendingFile], commit: Callable, *,
              find_moved: bool = False) -> None:
        if not items:
            return
        if self.gpus_per_worker and writer.model.config.precision == "int8":
            raise UsageError("this store's model is int8, which runs on ONNX Runtime on CPUs: "
                             "leave out gpus_per_worker (or `facerank precision fp32`)")
        connect(self.address)
        import ray
        import ray.data

        workers = self._pool_size(ray)
        dataset = ray.data.from_items(
            [{"path": str(item.path)} for item in items],
            override_num_blocks=max(1, min(len(items), max(math.ceil(len(items) / BLOCK_FILES),
                                                             2 * workers))))
        # Held here for the whole build: a restarted actor reads it again from the object store.
        model = ray.put(_model_files(writer.folder, writer.model.config))
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing actor options (the restarts) this way, and has no
            # other way yet.
            warnings.simplefilter("ignore", DeprecationWarning)
            embedded = self._map(dataset, model, writer, workers)
        by_path = {str(item.path): item for item in items}
        seen: set[str] = set()
        moved = writer.moved_files() if find_moved else None
        progress = Progress(writer.show_progress)
        try:
            with progress:
                task = progress.add("embedding on Ray", len(items))
                for batch in embedded.iter_batches(batch_size=writer.batch, batch_format="numpy"):
                    # A path met twice (a retried task's output) is one file, committed once.
                    rows = [row for row, path in enumerate(batch["path"]) if path not in seen]
                    seen.update(batch["path"][row] for row in rows)
                    outcomes = [_outcome(by_path[batch["path"][row]], batch, row, moved)
                                for row in rows]
                    _check_reachable(outcomes, first=len(seen) == len(rows))
                    for outcome in outcomes:
                        writer.note(outcome)
                    vectors = [o.vector for o in outcomes if o.vector is not None]
                    commit(outcomes, np.stack(vectors) if vectors else None)
                    for _ in outcomes:
                        progress.advance(task)
        except ray.exceptions.RayError as error:
            cause = getattr(error, "cause", None) or error
            raise StoreError(f"embedding on Ray failed: {type(cause).__name__}: {cause}; what "
                             "was committed is kept: run the same command again to go on") from None

    def build_index_file(self, folder, database, generation, plan, watermark) -> str:
        connect(self.address)
        return build_index_file_on_ray(folder, database, generation, plan, watermark,
                                       shard_size=self.shard_size,
                                       cpus_per_task=self.cpus_per_worker)

    # -- internals -------------------------------------------------------------------------------

    def _map(self, dataset, model, writer: Writer, workers: int):
        import ray.data

        return dataset.map_batches(
            _Embedder, fn_constructor_kwargs={
                "model": model,
                "device": "cuda" if self.gpus_per_worker else "cpu",
                "runtime": self._runtime(writer), "threads": max(1, int(self.cpus_per_worker)),
                "filesystem": self._filesystem},
            batch_size=self.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker or None, max_restarts=RETRIES,
            max_task_retries=RETRIES)

    def _pool_size(self, ray) -> int:
        if self.workers:
            return self.workers
        resources = ray.cluster_resources()
        if self.gpus_per_worker:
            return max(1, int(resources.get("GPU", 0) // self.gpus_per_worker))
        return max(1, int(resources.get("CPU", 1) // self.cpus_per_worker))

    def _runtime(self, writer: Writer) -> str:
        # The runtime the store's own model runs on here (ONNX Runtime or torch), so that the
        # actors compute what a local build would; torch where they have a GPU.
        return "torch" if self.gpus_per_worker else writer.model.runtime

    def _scan_uri(self, uri: str) -> Gallery:
        from pyarrow import fs as pafs

        filesystem, root = split_uri(uri)
        try:
            infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        except (OSError, ValueError) as error:
            raise GalleryError(f"cannot list {uri}: {error}") from None
        scheme = uri.split("://", 1)[0]
        prefix = root.rstrip("/") + "/"
        images, problems = [], []
        for info in sorted(infos, key=lambda info: info.path):
            relative = info.path[len(prefix):] if info.path.startswith(prefix) else info.path
            parts = relative.split("/")
            if info.type != pafs.FileType.File or any(p.startswith(".") for p in parts) or \
                    Path(info.path).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            full = f"{scheme}://{info.path}"  # the path as the file system names it, unparsed
            if len(parts) < 2:
                problems.append((full, "image outside any person's folder; ignored"))
                continue
            self._listed[full] = (int(info.size or 0), int(info.mtime_ns or 0))
            images.append(GalleryImage(full, parts[0]))
        if not images:
            raise GalleryError(f"no images found in {uri}; a gallery is a folder with one "
                               "sub-folder of images per person")
        self._root, self._filesystem = f"{scheme}://{prefix}", filesystem
        return Gallery(root=self._root, images=tuple(images), problems=tuple(problems))


@dataclass(frozen=True)
class _Stat:
    st_size: int
    st_mtime_ns: int


def _model_files(folder: Path, config) -> dict[str, bytes]:
    """The files a store's model is loaded from (and its face detector's weights, where the
    face step has a file), to send to the actors."""
    names = [CONFIG_FILE, config.weights_file, config.onnx_file, config.int8_file]
    files = {name: (folder / name).read_bytes() for name in names if name}
    if config.faces.model_file:
        files[_DETECTOR] = Path(config.faces.model_file).read_bytes()
    return files


_DETECTOR = "face-detector.dat"


def _check_reachable(outcomes: list[FileOutcome], *, first: bool) -> None:
    """Fail at once when the workers cannot read the first files at all: a gallery on the
    driver's disk that the cluster's machines do not see, rather than bad files."""
    unread = [o for o in outcomes if o.skipped is not None and not o.sha256]
    if first and outcomes and len(unread) == len(outcomes):
        raise GalleryError(
            f"the Ray workers could not read any of the first {len(outcomes)} files (e.g. "
            f"{unread[0].path}: {unread[0].skipped}); on a cluster of several machines the "
            "gallery must be a URI they all read (s3://...) or on a filesystem they all mount")


def _outcome(item: PendingFile, batch: dict, row: int, moved) -> FileOutcome:
    """What an actor found for one file, settled against the store as a local read is."""
    outcome = FileOutcome(item, sha256=str(batch["sha256"][row]), size=int(batch["size"][row]),
                          mtime_ns=int(batch["mtime_ns"][row]),
                          faces_found=int(batch["faces_found"][row]),
                          skipped=str(batch["skipped"][row]) or None)
    if outcome.skipped is not None:
        return outcome
    if settle_known_content(outcome, moved):
        if outcome.moved is None or moved.claim(outcome.moved.id):
            return outcome
        outcome.moved = None  # another file of this content took that record: a new one
    outcome.vector = np.asarray(batch["vector"][row], np.float32)
    return outcome


class _Embedder:
    """A Ray Data actor: the store's model and face step, applied to batches of paths."""

    def __init__(self, model, device: str, runtime: str, threads: int, filesystem):
        import ray

        from facerank.model.runtime import load_model

        files = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self._folder = tempfile.TemporaryDirectory(prefix="facerank-model-")
        for name, data in files.items():
            Path(self._folder.name, name).write_bytes(data)
        # As many threads as CPUs the actor asked Ray for: actors share the node's cores.
        self.model = load_model(self._folder.name, device=device, runtime=runtime,
                                threads=threads)
        config = read_config(self._folder.name)
        step = config.faces
        if _DETECTOR in files:
            step = replace(step, model_file=str(Path(self._folder.name, _DETECTOR)))
        self.faces = FaceFinder(step, size=config.image_size)
        self.dim = self.model.config.embedding_dim
        self.filesystem = filesystem
    def __call__(self, batch: dict) -> dict:
        paths = [str(path) for path in batch["path"]]
        out = {"path": np.array(paths, dtype=object), "sha256": [], "size": [], "mtime_ns": [],
               "faces_found": [], "skipped": []}
        images, positions = [], []
        for position, path in enumerate(paths):
            found = self._read(path)
            for key in ("sha256", "size", "mtime_ns", "faces_found", "skipped"):
                out[key].append(found[key])
            if found["image"] is not None:
                images.append(found["image"])
                positions.append(position)
        vectors = np.zeros((len(paths), self.dim), np.float32)
        if images:
            vectors[positions] = self.model.embed(images, batch_size=len(images))
        out = {key: np.array(value, dtype=object) if key in ("sha256", "skipped") else
               np.asarray(value) for key, value in out.items()}
        out["vector"] = vectors
        return out

    def _read(self, path: str) -> dict:
        found = {"sha256": "", "size": 0, "mtime_ns": 0, "faces_found": 0, "skipped": "",
                 "image": None}
        try:
            data, found["size"], found["mtime_ns"] = read_source(path, self.filesystem)
            found["sha256"] = hashlib.sha256(data).hexdigest()
            image = load_image(data)
            faces = self.faces.find(image, every=False)  # as the local build: the largest
            found["faces_found"] = len(faces)
            inputs = self.faces.inputs(image, faces=faces)
            if inputs:
                found["image"] = inputs[0].image
            else:
                found["skipped"] = NO_FACE
        except ImageError as error:
            found["skipped"] = error.reason
        except OSError as error:
            found["skipped"] = error.strerror or str(error)
        except Exception as error:  # one bad file must not fail (and retry) the whole task
            found["skipped"] = f"could not be processed ({type(error).__name__}: {error})"
        return found
