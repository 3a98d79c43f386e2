"""``FaceModel``: the network and its config on torch: preprocess, embed, classify, save, load.

The network itself (backbone, head, weights) is in ``facerank.model.network``; saving also writes
the ONNX export (``facerank.model.export``) that ONNX Runtime answers queries with.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from facerank import atomic
from facerank.errors import StoreError, StoreMismatchError
from facerank.faces.detection import FaceStep
from facerank.model import export
from facerank.model.config import CONFIG_FILE, ModelConfig, join_answers, read_config, resize_for_model
from facerank.model.network import build_network, features_and_logits, load_backbone_weights


class FaceModel:
    """A network and its config: preprocess, embed and classify images.

    >>> model = facerank.FaceModel.load("faces/")
    >>> images = [facerank.load_image("a.jpg"), facerank.load_image("b.jpg")]
    >>> vectors, probabilities = model.embed_and_classify(images)
    >>> vectors.shape, probabilities.shape       # 2048-d face prints; a column per person
    ((2, 2048), (2, 5))
    """

    runtime = "torch"
    precision = "fp32"

    def __init__(self, network: nn.Module, config: ModelConfig, *, device: str = "cpu"):
        self.network = network.to(device).eval()
        self.config = config
        self.device = torch.device(device)

    @classmethod
    def create(cls, people: Sequence[str], *, weights: str = "imagenet", image_size: int = 224,
               normalize_embeddings: bool = True) -> "FaceModel":
        state, origin = load_backbone_weights(weights)
        return cls.from_backbone(people, state, origin, image_size=image_size,
                                 normalize_embeddings=normalize_embeddings)

    @classmethod
    def from_backbone(cls, people: Sequence[str], backbone_state: dict | None, origin: str, *,
                      image_size: int = 224, normalize_embeddings: bool = True,
                      crop: float = 1.0, head: str = "linear", head_scale: float = 30.0,
                      faces: FaceStep | None = None) -> "FaceModel":
        """A model over already-loaded backbone weights (see ``load_backbone_weights``)."""
        if not people:
            raise ValueError("a model needs at least one person")
        config = ModelConfig(people=tuple(people), image_size=image_size, crop=crop,
                             normalize_embeddings=normalize_embeddings, weights_origin=origin,
                             head=head, head_scale=head_scale if head == "cosine" else 0.0,
                             faces=faces or FaceStep())
        return cls(build_network(len(people), backbone_state, head=head, head_scale=head_scale),
                   config)

    # -- preprocessing: shared by training, indexing and queries -------------------------------

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Resize RGB images to the model's size: a uint8 tensor N x 3 x S x S."""
        arrays = [resize_for_model(image, self.config.image_size, self.config.crop)
                  for image in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels → the float input the network expects (on the model's device)."""
        mean = torch.tensor(self.config.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.config.std, device=self.device).view(1, 3, 1, 1) * 255.0
        x = (pixels.to(self.device, torch.float32) - mean) / std
        return x.contiguous(memory_format=torch.channels_last)

    # -- inference -------------------------------------------------------------------------------

    def embed_and_classify(self, images: Sequence[Image.Image], *, batch_size: int = 32
                           ) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings N x 2048 float32, class probabilities N x people) for RGB images."""
        self.network.eval()
        vectors, probabilities = [], []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                pixels = self.pixels(images[start:start + batch_size])
                features, logits = features_and_logits(self.network, self.normalise(pixels))
                vectors.append(self._finish(features))
                probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return join_answers(self.config, vectors, probabilities)

    def embed(self, images: Sequence[Image.Image], *, batch_size: int = 32) -> np.ndarray:
        return self.embed_and_classify(images, batch_size=batch_size)[0]

    def _finish(self, features: torch.Tensor) -> np.ndarray:
        features = features.float()
        if self.config.normalize_embeddings:
            features = torch.nn.functional.normalize(features, dim=1)
        return features.cpu().numpy().astype(np.float32)

    # -- persistence -----------------------------------------------------------------------------

    def save(self, folder: str | Path, *, export_onnx: bool = True) -> ModelConfig:
        """Write the weights (safetensors, no pickle) and ``model.json`` into ``folder``.

        With ``export_onnx`` and the ``onnx`` package installed, the same network is also
        exported for ONNX Runtime, which answers queries without importing torch.
        Files are named after their fingerprint and ``model.json`` is replaced last, so a crash
        leaves either the old model or the new one, never a mix.
        """
        from safetensors.torch import save as save_safetensors

        folder = Path(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        data = save_safetensors(state)
        fingerprint = hashlib.sha256(data).hexdigest()
        weights_file = f"model-{fingerprint[:16]}.safetensors"
        atomic.write_bytes(folder / weights_file, data)
        previous = read_config(folder) if (folder / CONFIG_FILE).exists() else None
        from facerank import __version__

        config = replace(self.config, weights_file=weights_file, fingerprint=fingerprint,
                         facerank_version=__version__, onnx_file="", onnx_fingerprint="",
                         precision="fp32", int8_file="", int8_fingerprint="")
        if export_onnx and export.exporter_available():
            onnx_file = f"model-{fingerprint[:16]}.onnx"
            onnx_fingerprint = export.export(self.network, config, folder / onnx_file)
            config = replace(config, onnx_file=onnx_file, onnx_fingerprint=onnx_fingerprint)
        self.config = config
        atomic.write_json(folder / CONFIG_FILE, self.config.to_json())
        if previous:
            # New weights: the old int8 model is of the old weights; int8 is chosen again.
            for old_file in (previous.weights_file, previous.onnx_file, previous.int8_file):
                if old_file and old_file not in (config.weights_file, config.onnx_file):
                    (folder / old_file).unlink(missing_ok=True)
        return self.config

    @classmethod
    def load(cls, folder: str | Path, *, device: str = "cpu") -> "FaceModel":
        from safetensors.torch import load as load_safetensors

        folder = Path(folder)
        config = read_config(folder)
        weights_path = folder / config.weights_file
        try:
            data = weights_path.read_bytes()
        except OSError as error:
            raise StoreError(f"{weights_path}: cannot read the model weights ({error.strerror}); "
                             "train again with `facerank train GALLERY --store "
                             f"{folder}`") from None
        if hashlib.sha256(data).hexdigest() != config.fingerprint:
            raise StoreMismatchError(f"{weights_path} does not match the fingerprint in "
                                     f"{folder / CONFIG_FILE}; the store is damaged, train again")
        network = build_network(len(config.people), head=config.head,
                                head_scale=config.head_scale)
        network.load_state_dict(load_safetensors(data))
        return cls(network, config, device=device)
