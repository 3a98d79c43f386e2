"""The trained network exported to ONNX and run by ONNX Runtime: the same answers, no torch.

Why: ``import torch`` alone takes 2-4 s, which dominated a one-shot ``facerank identify``; ONNX
Runtime loads in a fraction of that and runs ResNet50 on the CPU as fast as eager PyTorch or
faster. The export is the *same function* as ``FaceModel.embed_and_classify`` — normalisation,
network, L2 normalisation and softmax are all inside the graph — and the tests check that both
give the same vectors and probabilities, so a gallery embedded by one is queried by the other.

``export`` needs torch (it runs when a model is saved); ``OnnxFaceModel`` needs only
``onnxruntime``, numpy and Pillow (``pip install "facerank[fast]"``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from facerank.model.config import ModelConfig, join_answers, read_config, resize_for_model
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
