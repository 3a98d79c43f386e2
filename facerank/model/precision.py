"""Which arithmetic a store's network runs in: fp32 (the default) or int8 (opt-in, faster).

int8 is the store's ONNX model quantised by ONNX Runtime (static QDQ: int8 weights per output
channel, uint8 activations whose ranges are calibrated on the store's own training images). On
a CPU with AVX-512 VNNI it embeds 3-5x faster than fp32, but its face prints are not fp32's:
measured on ORL (benchmarks/results/quantization.md), the worst cosine to fp32 was 0.998 and
the 10 nearest gallery images agreed 96%, short of the bar for a default (0.999 and 99%), while
the top-1 identity agreed on every held-out face. So it is a choice the user makes, and the
choice is part of the model's identity: the gallery is re-embedded with it, and a gallery
embedded in one precision is never searched with vectors of the other.

    >>> set_precision("faces/", "int8")   # then `facerank index build GALLERY` re-embeds
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from facerank import atomic
from facerank.model.config import CONFIG_FILE, ModelConfig, read_config, resize_for_model
from facerank.errors import ImageError, MissingExtraError, StoreError, UsageError
from facerank.folder_lock import FolderLock
from facerank.data.gallery import SPLIT_FILE, TRAIN_FOLDER, read_split

PRECISIONS = ("fp32", "int8")
# Each calibration image costs one fp32 pass; the benchmark calibrated on ORL's 280 training
# images, and the cap keeps the one-off cost bounded on large galleries.
CALIBRATION_IMAGES = 200


def set_precision(folder: str | Path, precision: str, *,
                  calibration_paths: Sequence[str | Path] | None = None,
                  samples: int = CALIBRATION_IMAGES, seed: int = 0) -> ModelConfig:
    """Make the store's model run in ``precision``; returns the new config.

    Switching to int8 quantises the ONNX model once (calibrated on ``calibration_paths``, by
    default up to ``samples`` of the images it was trained on) and keeps the file, so switching
    back and forth is cheap. The index must be rebuilt afterwards: until then, queries are
    refused (the index records the identity of the model that filled it).
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    folder = Path(folder)
    config = read_config(folder)
    if precision == "int8":
        if not config.onnx_file:
            raise StoreError(f"the model in {folder} has no ONNX export, which int8 is made "
                             "from; `pip install \"facerank[fast]\"`, then train again")
        if not (config.int8_file and _fingerprint_matches(folder / config.int8_file,
                                                          config.int8_fingerprint)):
            paths = list(calibration_paths or _training_images(folder))
            if len(paths) > samples:
                paths = random.Random(seed).sample(paths, samples)
            int8_file = f"{Path(config.onnx_file).stem}.int8.onnx"
            fingerprint = quantise(folder / config.onnx_file, folder / int8_file, paths, config)
            config = replace(config, int8_file=int8_file, int8_fingerprint=fingerprint)
    config = replace(config, precision=precision)
    # The slow quantisation ran without the lock; the config is written under it, and only if
    # no one retrained the model meanwhile.
    with FolderLock(folder, wait=None):
        if read_config(folder).fingerprint != config.fingerprint:
            raise StoreError(f"the model in {folder} was retrained while its precision was being "
                             f"set; run `facerank precision {precision}` again")
        atomic.write_json(folder / CONFIG_FILE, config.to_json())
    return config


def quantise(source: Path, target: Path, calibration_paths: Sequence[str | Path],
             config: ModelConfig, *, method: str = "MinMax", fp32_tail_convs: int = 0) -> str:
    """Static QDQ int8 of the fp32 ONNX model ``source`` into ``target`` (atomically); returns
    its sha256. Needs the ``onnx`` and ``onnxruntime`` packages (the ``fast`` extra).

    The defaults are what ``set_precision`` uses. ``benchmarks/quantization.py`` also measures
    the alternatives, which did not bring int8 closer to fp32: ``method="Percentile"``
    calibration, and ``fp32_tail_convs``: the last that many convolutions and every node after
    the first of them kept in fp32 (chosen by graph order, not by the exporter's node names).
    """
    try:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                              QuantFormat, QuantType, quant_pre_process,
                                              quantize_static)
    except ImportError as error:
        raise MissingExtraError('int8 needs ONNX Runtime and onnx: pip install "facerank[fast]"'
                                ) from error
    images = calibration_pixels(calibration_paths, config, folder=Path(source).parent)

    class Batches(CalibrationDataReader):
        def __init__(self):
            # One image a batch: ORT's histogram calibrators need batches of equal size.
            self._batches = iter([{"pixels": images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self._batches, None)

    def write(temporary: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="facerank-int8-") as work:
            # Shape inference and constant folding first, as ORT recommends before quantising.
            prepared = Path(work) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared))
            nodes = onnx.load(str(prepared)).graph.node
            convs = [i for i, node in enumerate(nodes) if node.op_type == "Conv"]
            first_kept = convs[-fp32_tail_convs] if fp32_tail_convs else len(nodes)
            quantize_static(str(prepared), str(temporary), Batches(),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, method),
                            nodes_to_exclude=[node.name for node in nodes[first_kept:]])

    atomic.write_with(target, write)
    return hashlib.sha256(Path(target).read_bytes()).hexdigest()


def calibration_pixels(paths: Sequence[str | Path], config: ModelConfig, *,
                       folder: str | Path | None = None) -> np.ndarray:
    """N x 3 x S x S float32 pixels of the images that load, through the model's face step
    (detections cached in ``folder``); unreadable ones are left out."""
    from facerank.faces.cache import face_finder, read_file_input

    finder = face_finder(config, folder)
    batch = []
    for path in paths:
        try:
            image, _ = read_file_input(finder, path)
        except ImageError:
            continue  # a calibration sample, not a gallery entry: one fewer changes nothing
        if image is not None:
            batch.append(resize_for_model(image, config.image_size, config.crop))
    if not batch:
        paths = list(paths)
        first = f" (first: {paths[0]})" if paths else ""
        raise StoreError(f"none of the {len(paths)} images to calibrate int8 with could be read"
                         f"{first}; put the training images back where {TRAIN_FOLDER}/"
                         f"{SPLIT_FILE} lists them, or pass calibration_paths to set_precision")
    return np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2), dtype=np.float32)


def _training_images(folder: Path) -> list[str]:
    """The images the model was trained on, as training recorded them."""
    split = read_split(folder)
    if split is None:
        raise StoreError(f"{folder}: no record of which images the model was trained on "
                         f"({TRAIN_FOLDER}/{SPLIT_FILE}) to calibrate int8 on; train it again, "
                         "or pass calibration_paths to set_precision")
    return [path for path, _ in split.train]


def _fingerprint_matches(path: Path, fingerprint: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == fingerprint
    except OSError:
        return False
