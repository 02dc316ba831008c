"""Mask losses (method.md section 3): per-mask BCE and DICE, averaged over masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits, target: B x H x W -> mean over masks of the per-mask mean pixel BCE."""
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return per_pixel.flatten(1).mean(1).mean()


def mask_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2 sum(p y) + eps) / (sum p + sum y + eps) per mask, p = sigmoid; mean over masks.

    The smoothing ``eps`` makes an empty ground truth push the prediction toward empty.
    """
    p = logits.sigmoid().flatten(1)
    y = target.flatten(1)
    dice = 1 - (2 * (p * y).sum(1) + eps) / (p.sum(1) + y.sum(1) + eps)
    return dice.mean()
