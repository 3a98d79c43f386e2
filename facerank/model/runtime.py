"""Which engine runs a store's network: ONNX Runtime where it can, torch otherwise.

Both compute the same function (see ``facerank.model.onnx_model``), so the choice changes speed, not
answers. ``"auto"`` picks ONNX Runtime when the model was exported with it, ``onnxruntime`` is
installed and the device is the CPU: it starts without importing torch (a one-shot
``facerank identify`` is then a second, not several) and runs ResNet50 faster on the CPU.
Set ``FACERANK_RUNTIME=torch`` (or pass ``runtime="torch"``) to force torch. A store switched to
int8 (``facerank.model.precision``) runs on ONNX Runtime only: torch would give other vectors.
"""

from __future__ import annotations

import os
from pathlib import Path

from facerank.model import onnx_model
from facerank.errors import MissingExtraError, UsageError
from facerank.model.config import read_config

RUNTIMES = ("auto", "onnxruntime", "torch")


def load_model(folder: str | Path, *, device: str = "cpu", runtime: str | None = None,
               threads: int | None = None):
    """The store's model as a ``FaceModel`` (torch) or an ``OnnxFaceModel`` (ONNX Runtime).

    ``threads``: how many threads one call may use (default: the engine's own choice, about one
    per core); set it where several models share the machine's cores.

    >>> load_model("faces/").runtime
    'onnxruntime'
    """
    runtime = runtime or os.environ.get("FACERANK_RUNTIME") or "auto"
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    config = read_config(folder)
    if runtime == "onnxruntime" and device != "cpu":
        raise UsageError(f"the onnxruntime runtime runs on the CPU only; got device {device!r}")
    if runtime == "onnxruntime" and not onnx_model.available():
        raise MissingExtraError('runtime "onnxruntime" needs the fast extra: '
                                'pip install "facerank[fast]"')
    if config.precision == "int8":
        if runtime == "torch" or device != "cpu":
            raise UsageError(f"the model in {folder} is int8, which runs on ONNX Runtime on the "
                             "CPU only; run `facerank precision fp32` to use torch")
        if not onnx_model.available():
            raise MissingExtraError(f"the model in {folder} is int8, which needs ONNX Runtime: "
                                    'pip install "facerank[fast]" (or `facerank precision fp32`)')
        return onnx_model.OnnxFaceModel.load(folder, config=config, threads=threads)
    use_onnx = runtime == "onnxruntime" or (
        runtime == "auto" and device == "cpu" and bool(config.onnx_file)
        and onnx_model.available())
    if use_onnx:
        return onnx_model.OnnxFaceModel.load(folder, config=config, threads=threads)
    import torch

    from facerank.model.torch_model import FaceModel

    if threads:
        torch.set_num_threads(threads)  # torch's pool is per process
    return FaceModel.load(folder, device=device)
