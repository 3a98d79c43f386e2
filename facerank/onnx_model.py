"""The trained network exported to ONNX and run by ONNX Runtime: the same answers, no torch.

Why: ``import torch`` alone takes 2-4 s, which dominated a one-shot ``facerank query``; ONNX
Runtime loads in a fraction of that and runs ResNet50 on the CPU as fast as eager PyTorch or
faster. The export is the *same function* as ``FaceModel.embed_and_classify`` — normalisation,
network, L2 normalisation and softmax are all inside the graph — and the tests check that both
give the same vectors and probabilities, so a gallery embedded by one is queried by the other.

``export`` needs torch (it runs when a model is saved); ``OnnxFaceModel`` needs only
``onnxruntime``, numpy and Pillow (``pip install "facerank[fast]"``).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from facerank import atomic
from facerank.config import ModelConfig, join_answers, read_config, resize_for_model
from facerank.errors import StoreError, StoreMismatchError

OPSET = 17
INPUT = "pixels"                          # N x 3 x S x S float32, 0..255, RGB
OUTPUTS = ("embedding", "probabilities")  # N x 2048, N x people


def available() -> bool:
    """Whether ONNX Runtime can be imported (it is the ``fast`` extra)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export(network, config: ModelConfig, path: str | Path) -> str:
    """Write ``network`` with its preprocessing to ``path`` (atomically); returns its sha256.

    Raises ImportError when the ``onnx`` package (which torch's exporter needs) is missing.
    """
    import torch

    from facerank.model import features_and_logits

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


class OnnxFaceModel:
    """``FaceModel``'s query half on ONNX Runtime: embed and classify RGB images.

    >>> model = OnnxFaceModel.load("faces/")
    >>> vectors, probabilities = model.embed_and_classify([image])
    """

    runtime = "onnxruntime"

    def __init__(self, session, config: ModelConfig):
        self._session = session
        self.config = config
        self.precision = config.precision  # "fp32" or "int8": which of the two files runs

    @classmethod
    def load(cls, folder: str | Path, *, config: ModelConfig | None = None,
             threads: int | None = None) -> "OnnxFaceModel":
        """``threads``: ONNX Runtime's intra-op threads (default: one per physical core)."""
        import onnxruntime

        folder = Path(folder)
        config = config or read_config(folder)
        if not config.onnx_file:
            raise StoreError(f"the model in {folder} has no ONNX export; train again with "
                             "`pip install \"facerank[fast]\"` installed")
        int8 = config.precision == "int8"
        path = folder / (config.int8_file if int8 else config.onnx_file)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise StoreError(f"{path}: cannot read the ONNX model ({error.strerror})") from None
        expected = config.int8_fingerprint if int8 else config.onnx_fingerprint
        if hashlib.sha256(data).hexdigest() != expected:
            raise StoreMismatchError(f"{path} does not match the fingerprint in the model "
                                     "config; the store is damaged, train again")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are not the user's
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return cls(session, config)

    def embed_and_classify(self, images: Sequence[Image.Image], *, batch_size: int = 32
                           ) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings N x 2048 float32, class probabilities N x people) for RGB images."""
        size = self.config.image_size
        vectors, probabilities = [], []
        for start in range(0, len(images), batch_size):
            batch = np.stack([resize_for_model(image, size, self.config.crop)
                              for image in images[start:start + batch_size]])
            pixels = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
            embedding, probability = self._session.run(list(OUTPUTS), {INPUT: pixels})
            vectors.append(embedding.astype(np.float32, copy=False))
            probabilities.append(probability.astype(np.float32, copy=False))
        return join_answers(self.config, vectors, probabilities)

    def embed(self, images: Sequence[Image.Image], *, batch_size: int = 32) -> np.ndarray:
        return self.embed_and_classify(images, batch_size=batch_size)[0]
