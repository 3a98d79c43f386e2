"""Embedding a gallery on a Ray cluster: Ray Data reads, decodes, finds faces and embeds in an
actor pool; the driver commits the vectors into the store as they stream back.

    >>> from facerank.scale import RayEngine
    >>> store.sync_folder("s3://bucket/photos/", engine=RayEngine(workers=8, gpus_per_worker=1))

Each actor holds one copy of the store's model, sent to it through Ray's object store (the
cluster needs no access to the store's folder) and run by the store's runtime (ONNX Runtime or
torch, as ``facerank.runtime`` picks; torch on a GPU where ``gpus_per_worker`` asks for one). The
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
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from facerank.config import CONFIG_FILE, read_config
from facerank.errors import GalleryError, ImageError
from facerank.gallery import Gallery, GalleryImage, scan_gallery
from facerank.images import IMAGE_SUFFIXES, load_image
from facerank.progress import Progress
from facerank.scale.cluster import connect
from facerank.scale.index_build import SHARD_SIZE, build_index_file_on_ray
from facerank.store import layout
from facerank.store.ingest import NO_FACE, Writer, _Item, _Read

#: Images an actor embeds at once (one batch of the network).
EMBED_BATCH = 32
#: Results per transaction on the driver: larger than a local build's, since the driver only
#: writes (the embedding happens elsewhere) and each commit costs an fsync.
COMMIT_EVERY = 256


@dataclass
class RayEngine:
    """Embed and build the index on a Ray cluster (see the module's docstring).

    ``address``: ``"auto"`` joins the cluster on this machine or starts one; ``"ray://head:10001"``
    joins a remote one. ``workers``: actors embedding at once (one model each; default: one per
    CPU the cluster has, less one for the driver's reading). ``gpus_per_worker``: GPUs each
    actor asks Ray for (0: CPU). ``cpus_per_worker``: CPUs each actor asks for.
    """

    address: str | None = "auto"
    workers: int | None = None
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1
    batch_size: int = EMBED_BATCH
    commit_every: int = COMMIT_EVERY
    shard_size: int = SHARD_SIZE
    defers_index = True

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise ValueError("gpus_per_worker must be at least 0 and cpus_per_worker above 0")
        self._listed: dict[str, tuple[int, int]] = {}  # URI -> (size, mtime_ns) from the listing

    # -- what a write asks of an engine ----------------------------------------------------------

    def scan(self, gallery: str | Path) -> Gallery:
        """The gallery's images: a local folder as ``scan_gallery`` lists it, or any URI
        pyarrow reads (``s3://``, ``gs://``, ``file://`` ...), listed through pyarrow."""
        if not layout.is_uri(str(gallery)):
            return scan_gallery(gallery)
        return self._scan_uri(str(gallery))

    def stat(self, path: str | Path):
        if layout.is_uri(str(path)):
            return _Stat(*self._listed[str(path)])  # as listed: no second request per file
        return os.stat(path)

    def exists(self, path: str) -> bool:
        return path in self._listed if layout.is_uri(path) else os.path.exists(path)

    def embed(self, writer: Writer, items: list[_Item], commit: Callable, *,
              find_moved: bool = False) -> None:
        if not items:
            return
        connect(self.address)
        import ray.data  # binds ``ray`` too

        by_path = {str(item.path): item for item in items}
        model = ray.put(_model_files(writer.folder, writer.model.config))
        workers = self.workers or max(1, int(ray.cluster_resources().get("CPU", 2)) - 1)
        dataset = ray.data.from_items(
            [{"path": str(item.path)} for item in items],
            override_num_blocks=max(1, min(len(items) // self.batch_size, 4 * workers)))
        embedded = dataset.map_batches(
            _Embedder, fn_constructor_kwargs={
                "model": model, "device": self._device(), "runtime": self._runtime(writer),
                "threads": max(1, int(self.cpus_per_worker))},
            batch_size=self.batch_size, batch_format="numpy", concurrency=workers,
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker or None)
        moved = writer.moved_files() if find_moved else None
        progress = Progress(writer.show_progress)
        with progress:
            task = progress.add("embedding on Ray", len(items))
            for batch in embedded.iter_batches(batch_size=writer.batch, batch_format="numpy"):
                outcomes = [_outcome(by_path[path], batch, row, moved)
                            for row, path in enumerate(batch["path"])]
                for outcome in outcomes:
                    writer._note(outcome)
                vectors = [o.vector for o in outcomes if o.vector is not None]
                commit(outcomes, np.stack(vectors) if vectors else None)
                for _ in outcomes:
                    progress.advance(task)

    def build_index_file(self, folder, database, generation, plan, watermark) -> str:
        connect(self.address)
        return build_index_file_on_ray(folder, database, generation, plan, watermark,
                                       shard_size=self.shard_size)

    # -- internals -------------------------------------------------------------------------------

    def _device(self) -> str:
        return "cuda" if self.gpus_per_worker else "cpu"

    def _runtime(self, writer: Writer) -> str:
        # The runtime the store's own model runs on here (ONNX Runtime or torch), so that the
        # actors compute what a local build would; torch where they have a GPU.
        return "torch" if self.gpus_per_worker else writer.model.runtime

    def _scan_uri(self, uri: str) -> Gallery:
        from pyarrow import fs as pafs

        try:
            filesystem, root = pafs.FileSystem.from_uri(uri)
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
            full = f"{scheme}://{info.path}" if scheme != "file" else f"file://{info.path}"
            if len(parts) < 2:
                problems.append((full, "image outside any person's folder; ignored"))
                continue
            mtime_ns = info.mtime_ns if info.mtime_ns is not None else 0
            self._listed[full] = (int(info.size or 0), int(mtime_ns))
            images.append(GalleryImage(full, parts[0]))
        if not images:
            raise GalleryError(f"no images found in {uri}; a gallery is a folder with one "
                               "sub-folder of images per person")
        return Gallery(root=f"{scheme}://{prefix}", images=tuple(images),
                       problems=tuple(problems))


@dataclass(frozen=True)
class _Stat:
    st_size: int
    st_mtime_ns: int


def _model_files(folder: Path, config) -> dict[str, bytes]:
    """The files a store's model is loaded from, to send to the actors."""
    names = [CONFIG_FILE, config.weights_file, config.onnx_file, config.int8_file]
    return {name: (folder / name).read_bytes() for name in names if name}


def _outcome(item: _Item, batch: dict, row: int, moved) -> _Read:
    """What an actor found for one file, checked against the store as a local read would be:
    the same content as its record is only a new stat, the content of a record whose file is
    gone is that record moved."""
    outcome = _Read(item, sha256=str(batch["sha256"][row]), size=int(batch["size"][row]),
                    mtime_ns=int(batch["mtime_ns"][row]),
                    faces_found=int(batch["faces_found"][row]),
                    skipped=str(batch["skipped"][row]) or None)
    if outcome.skipped is not None:
        return outcome
    old = item.old
    if not item.reembed and old is not None and old.sha256 == outcome.sha256 \
            and old.person == item.person:
        outcome.unchanged = True
        return outcome
    if old is None and moved is not None:
        record = moved.find(outcome.sha256, item.person)
        if record is not None and moved.claim(record.id):
            outcome.moved = record
            return outcome
    outcome.vector = np.asarray(batch["vector"][row], np.float32)
    return outcome


class _Embedder:
    """A Ray Data actor: the store's model and face step, applied to batches of paths."""

    def __init__(self, model, device: str, runtime: str, threads: int):
        import ray

        from facerank.face_cache import face_finder
        from facerank.runtime import load_model

        files = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self._folder = tempfile.TemporaryDirectory(prefix="facerank-model-")
        for name, data in files.items():
            Path(self._folder.name, name).write_bytes(data)
        # As many threads as CPUs the actor asked Ray for: actors share the node's cores.
        self.model = load_model(self._folder.name, device=device, runtime=runtime,
                                threads=threads)
        self.faces = face_finder(read_config(self._folder.name), None)
        self.dim = self.model.config.embedding_dim

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
            data, found["size"], found["mtime_ns"] = _read_source(path)
            found["sha256"] = hashlib.sha256(data).hexdigest()
            image = load_image(data)
            faces = self.faces.find(image)
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
        return found


def _read_source(path: str) -> tuple[bytes, int, int]:
    """(content, size, mtime_ns) of a local file or of a URI pyarrow can open."""
    if not layout.is_uri(path):
        with open(path, "rb") as stream:
            info = os.fstat(stream.fileno())
            return stream.read(), info.st_size, info.st_mtime_ns
    from pyarrow import fs as pafs

    filesystem, inner = pafs.FileSystem.from_uri(path)
    info = filesystem.get_file_info(inner)
    if info.type != pafs.FileType.File:
        raise OSError(2, "no such file", path)
    with filesystem.open_input_file(inner) as stream:
        data = stream.read()
    return data, int(info.size or len(data)), int(info.mtime_ns or 0)
