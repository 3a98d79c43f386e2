"""The torch network written as ONNX, with its preprocessing inside the graph.

Runs when a model is saved (it needs torch and the ``onnx`` package); ``OnnxFaceModel``
(``facerank.model.onnx_model``) runs the file without torch.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from facerank import atomic
from facerank.model.config import ModelConfig
from facerank.model.network import features_and_logits
from facerank.model.onnx_model import INPUT, OPSET, OUTPUTS


def exporter_available() -> bool:
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
    except ImportError:
        return False
    return True



def export(network, config: ModelConfig, path: str | Path) -> str:
    """Write ``network`` with its preprocessing to ``path`` (atomically); returns its sha256.

    Raises ImportError when the ``onnx`` package (which torch's exporter needs) is missing.
    """
    import torch

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network
            self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1) * 255.0)

        def forward(self, pixels):
            features, logits = features_and_logits(self.network, (pixels - self.mean) / self.std)
            if config.normalize_embeddings:
                features = torch.nn.functional.normalize(features, dim=1)
            return features, torch.softmax(logits, dim=1)

    module = Exported().eval()
    example = torch.zeros(1, 3, config.image_size, config.image_size)

    def write(temporary: Path) -> None:
        # The TorchScript-based exporter: ~3x faster than the torch.export-based one, needs no
        # onnxscript, and gives a plain static graph that ONNX Runtime fuses well. Torch
        # deprecates it; where it is gone, the torch.export-based exporter (which needs
        # onnxscript) takes over. Batch and image size are dynamic, as they are in torch.
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                torch.onnx.export(
                    module, (example,), str(temporary), input_names=[INPUT],
                    output_names=list(OUTPUTS), opset_version=OPSET, dynamo=False,
                    dynamic_axes={INPUT: {0: "batch", 2: "height", 3: "width"},
                                  **{name: {0: "batch"} for name in OUTPUTS}})
            except (TypeError, NotImplementedError, AttributeError):
                batch = torch.export.Dim("batch", min=1, max=65536)
                side = torch.export.Dim("side", min=32, max=4096)
                torch.onnx.export(
                    module, (example,), str(temporary), input_names=[INPUT],
                    output_names=list(OUTPUTS), dynamo=True, external_data=False,
                    dynamic_shapes={"pixels": {0: batch, 2: side, 3: side}}, verbose=False)

    atomic.write_with(path, write)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
