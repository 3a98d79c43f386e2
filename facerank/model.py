"""The network: a torchvision ResNet50 with a new head, its preprocessing, and its weights.

One forward pass gives both answers facerank needs: the ``avg_pool`` output (the 2048-d face
print that goes into the index) and the head's logits (who it is). Preprocessing lives in
``ModelConfig`` and is saved with the weights, so training, indexing and querying can never
disagree on it.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from facerank import atomic
from facerank.base import base_folder, read_base
from facerank.config import (CONFIG_FILE, EMBEDDING_DIM, IMAGENET_MEAN, IMAGENET_STD,  # noqa: F401
                             ModelConfig, join_answers, read_config, resize_for_model)
from facerank.errors import StoreError, StoreMismatchError, WeightsUnavailableError
from facerank.faces import FaceStep


def _torchvision_models():
    """torchvision.models, or a clear error when torchvision and torch do not belong together."""
    try:
        import torchvision.models
    except (ImportError, RuntimeError) as error:
        raise ImportError(
            f"torchvision cannot be imported ({error}). This usually means torch and torchvision "
            "come from different builds (for example a CPU-only torch with PyPI's torchvision). "
            "Install a matching pair into a fresh virtual environment: "
            "`pip install torch torchvision` from PyPI, or follow the README's setup.") from None
    return torchvision.models


class CosineHead(nn.Module):
    """Logits = ``scale`` x the cosine between the face print and each person's weight vector.

    Trained with a margin (CosFace or ArcFace, see ``train.margin_logits``), it pulls each
    person's face prints into a tight cone around their weight vector, so that the L2-normalised
    ``avg_pool`` vectors the index holds separate people by angle, people never trained on too.
    Softmax over its logits still gives the probabilities ``classify`` reports.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.scale = float(scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosines = nn.functional.linear(nn.functional.normalize(features, dim=1),
                                       nn.functional.normalize(self.weight, dim=1))
        return self.scale * cosines


HEADS = ("linear", "cosine")


def build_network(num_classes: int, backbone_state: dict | None = None, *, head: str = "linear",
                  head_scale: float = 30.0) -> nn.Module:
    """A torchvision ResNet50 whose ``fc`` is a new ``num_classes`` head (see ``HEADS``)."""
    if head not in HEADS:
        raise StoreMismatchError(f"unknown head {head!r}: this facerank knows {', '.join(HEADS)}")
    network = _torchvision_models().resnet50(weights=None)
    if backbone_state is not None:
        backbone_state = {k: v for k, v in backbone_state.items() if not k.startswith("fc.")}
        missing, unexpected = network.load_state_dict(backbone_state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise StoreMismatchError(
                "the weights are not a ResNet50 state dict: "
                f"{len(missing)} missing and {len(unexpected)} unexpected keys "
                f"(for example {(missing + unexpected)[:3]})")
    if head == "cosine":
        network.fc = CosineHead(network.fc.in_features, num_classes, head_scale)
    else:
        network.fc = nn.Linear(network.fc.in_features, num_classes)
    return network


def features_and_logits(network: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``avg_pool`` output (N x 2048) and the head's logits, from one forward pass."""
    x = network.conv1(pixels)
    x = network.maxpool(network.relu(network.bn1(x)))
    x = network.layer4(network.layer3(network.layer2(network.layer1(x))))
    features = torch.flatten(network.avgpool(x), 1)
    return features, network.fc(features)


def load_backbone_weights(weights: str) -> tuple[dict | None, str]:
    """Resolve ``weights`` to (state dict or None, origin label).

    ``"imagenet"``: torchvision's ``ResNet50_Weights.DEFAULT``, downloaded once and cached under
    ``$TORCH_HOME/hub/checkpoints``; ``"none"``: random initialisation; a facerank base (the
    folder ``facerank pretrain`` wrote, see ``facerank.base``); anything else: the path of a
    ResNet50 state dict (``.pth``/``.pt``, or ``.safetensors``).
    """
    if weights == "none":
        warnings.warn("training from random initialisation: expect far lower accuracy than "
                      "from ImageNet weights unless the recipe trains for many epochs",
                      stacklevel=2)
        return None, "none"
    if weights == "imagenet":
        return _imagenet_state(), "imagenet:ResNet50_Weights.DEFAULT"
    folder = base_folder(weights)
    if folder is not None:
        state, base = read_base(folder)
        return state, f"base:{folder.resolve().name}@{base.fingerprint[:12]}"
    path = Path(weights)
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        raise StoreError(f"{path}: its pretraining has not finished (no base.json yet); run "
                         f"`facerank pretrain CORPUS --out {path} --resume` to finish it")
    if not path.is_file():
        raise ValueError(f"weights must be 'imagenet', 'none', a facerank base folder or the path "
                         f"of a weights file; {weights!r} is none of these")
    return _read_state_file(path), f"file:{path.name}"


def _imagenet_state() -> dict:
    choice = _torchvision_models().ResNet50_Weights.DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(choice.url).name
    try:
        return choice.get_state_dict(progress=True, check_hash=True)
    except Exception as error:  # URLError, socket errors, hash mismatch: all mean "not here"
        raise WeightsUnavailableError(
            f"cannot get the ImageNet weights for ResNet50 ({type(error).__name__}: {error}). "
            f"Download {choice.url} on a machine with internet and put it at {cache} "
            f"(set TORCH_HOME to move that folder), or pass --weights PATH to a ResNet50 state "
            f"dict, or --weights none to start from random initialisation") from None


def _read_state_file(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise StoreError(f"{path}: cannot read weights ({error})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint: take its model part
    if not isinstance(state, dict):
        raise StoreError(f"{path}: not a state dict")
    return state


def _onnx_exporter_available() -> bool:
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
    except ImportError:
        return False
    return True


class FaceModel:
    """A network and its config: preprocess, embed and classify images.

    >>> model = FaceModel.load("faces/")
    >>> vectors, probabilities = model.embed_and_classify([image_a, image_b])
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
        if export_onnx and _onnx_exporter_available():
            from facerank import onnx_model

            onnx_file = f"model-{fingerprint[:16]}.onnx"
            onnx_fingerprint = onnx_model.export(self.network, config, folder / onnx_file)
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
