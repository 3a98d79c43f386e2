"""The network: a torchvision ResNet50 with a new head, its preprocessing, and its weights.

One forward pass gives both answers facerank needs: the ``avg_pool`` output (the 2048-d face
print that goes into the index) and the head's logits (who it is). Preprocessing lives in
``ModelConfig`` and is saved with the weights, so training, indexing and querying can never
disagree on it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from facerank.model.base import base_folder, read_base
from facerank.errors import (MissingExtraError, StoreError, StoreMismatchError, UsageError,
                             WeightsUnavailableError)


def _torchvision_models():
    """torchvision.models, or a clear error when torchvision and torch do not belong together."""
    try:
        import torchvision.models
    except (ImportError, RuntimeError) as error:
        # An installation problem the user fixes with pip: one line and exit 1 at the CLI.
        raise MissingExtraError(
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
    folder ``facerank pretrain`` wrote, see ``facerank.model.base``); anything else: the path of a
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
    if path.is_dir():
        raise StoreError(f"{path} is a folder but not a base from `facerank pretrain` (it has no "
                         f"base.json); {_NEXT_STEP}")
    if not path.is_file():
        raise UsageError(f"weights must be 'imagenet', 'none', a facerank base folder or the path "
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


#: The files ``weights=PATH`` reads as a ResNet50 state dict, by their suffix.
STATE_FILE_SUFFIXES = (".pth", ".pt", ".safetensors")
_NEXT_STEP = ("pass a ResNet50 state dict (saved by torch.save(model.state_dict(), PATH) or "
              "safetensors), a base folder from `facerank pretrain`, imagenet or none")


def _read_state_file(path: Path) -> dict:
    """A ResNet50 state dict from ``path``, or a ``StoreError`` in one line naming the file, what
    is wrong with it and what to pass instead (never torch's multi-line unpickling advice)."""
    if path.suffix.lower() not in STATE_FILE_SUFFIXES:
        raise StoreError(f"{path} is not a ResNet50 state dict ({', '.join(STATE_FILE_SUFFIXES)})"
                         " nor a base folder from `facerank pretrain`; pass one of those as the "
                         "weights, or imagenet, or none")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip, safetensors and OS errors: all "cannot read it"
        raise StoreError(f"{path}: cannot read it as weights ({_load_failure(path, error)}); "
                         f"{_NEXT_STEP}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint: take its model part
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        what = "a dict of non-tensors" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise StoreError(f"{path}: not a state dict (it holds {what}); {_NEXT_STEP}")
    expected = _resnet50_keys()
    keys = {k for k in state if not k.startswith("fc.")}
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    if missing or unexpected:
        raise StoreError(f"{path}: not a ResNet50 state dict ({len(missing)} missing and "
                         f"{len(unexpected)} unexpected keys, for example "
                         f"{(missing + unexpected)[:3]}); {_NEXT_STEP}")
    return state


def _load_failure(path: Path, error: Exception) -> str:
    """The cause of a failed load in a few words, in place of torch's multi-line advice."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror  # missing, unreadable: the file, not its contents
    text = str(error).strip()
    if path.suffix.lower() == ".safetensors":
        return "not a safetensors file" + (f": {text.splitlines()[0][:200]}" if text else "")
    unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsupported:
        return (f"it pickles a {unsupported.group(1)} object, not only tensors; facerank does "
                "not unpickle arbitrary objects")
    return "not a file torch.save wrote: damaged, truncated or another format"


def _resnet50_keys() -> set[str]:
    """The state-dict keys of torchvision's ResNet50 without its ``fc`` (built on the meta
    device: no memory, no weights)."""
    with torch.device("meta"):
        network = _torchvision_models().resnet50(weights=None)
    return {k for k in network.state_dict() if not k.startswith("fc.")}
