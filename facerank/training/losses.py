"""The margin losses' logits: what CosFace and ArcFace heads train on.

>>> loss = nn.functional.cross_entropy(margin_logits(logits, labels, config), labels)
"""

from __future__ import annotations

import math

import torch

from facerank.training.recipes import TrainConfig


def margin_logits(logits: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """The cosine head's logits with the training margin applied to each true person.

    CosFace subtracts ``margin`` from the true person's cosine, ArcFace adds it to the angle:
    either way a face print must beat every other person by a margin, not just win, which
    leaves room for people never trained on. Softmax logits pass through unchanged.
    """
    if config.loss == "softmax" or config.margin == 0.0:
        return logits
    true = logits.gather(1, labels[:, None]) / config.scale
    if config.loss == "cosface":
        with_margin = true - config.margin
    else:
        angle = torch.acos(true.clamp(-1 + 1e-6, 1 - 1e-6))
        # Past pi - margin, cos(angle + margin) would rise again; fall back to CosFace there.
        with_margin = torch.where(angle + config.margin < math.pi, torch.cos(angle + config.margin),
                                  true - config.margin * math.sin(config.margin))
    return logits.scatter(1, labels[:, None], with_margin * config.scale)
