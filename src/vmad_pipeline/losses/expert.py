"""The anomaly expert's stage-1 ("professional training") loss: every level's significance map
against the mask, and the expert's image score against the label (Anomaly-OV trains its expert
alone on the training classes' masks and labels before instruction tuning; the terms are ours:
the deck names no loss)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_targets(masks: torch.Tensor, tokens: int) -> torch.Tensor:
    """B x H x W binary masks -> B x N: the share of each token's cell that is anomalous, on the
    square token grid (area pooling)."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} tokens are not a square grid")
    return F.adaptive_avg_pool2d(masks[:, None].float(), side).flatten(1)


def expert_loss(
    level_maps: torch.Tensor,
    score: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    *,
    image_weight: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Mean over levels of the token BCE of ``level_maps`` (B x L x N probabilities) against the
    masks' token shares, plus ``image_weight`` x the BCE of ``score`` (B) against ``labels``."""
    target = token_targets(masks, level_maps.shape[-1])[:, None].expand_as(level_maps)
    tokens = F.binary_cross_entropy(level_maps.clamp(eps, 1 - eps), target)
    image = F.binary_cross_entropy(score.clamp(eps, 1 - eps), labels.float())
    return tokens + image_weight * image
