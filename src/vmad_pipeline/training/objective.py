"""The training objective: how the model's loss terms are weighted (method.md section 3).

``L = w_txt * CE + w_bce * BCE + w_dice * DICE + w_pbsd * PBSD + w_patch_bce * box BCE``; a term
the batch does not produce (no [SEG] sample, DSSL off) counts as zero.
"""

from __future__ import annotations

import torch

from vmad_pipeline.configs import LossWeights
from vmad_pipeline.models.vmad import VmadOutput

TERMS = ("ce", "bce", "dice", "pbsd", "patch_bce")  # VmadOutput fields, in LossWeights' order
WEIGHT_OF = {"ce": "txt", "bce": "bce", "dice": "dice", "pbsd": "pbsd", "patch_bce": "patch_bce"}


def weighted_loss(out: VmadOutput, weights: LossWeights) -> torch.Tensor:
    """The weighted sum of the loss terms present in ``out`` (a scalar)."""
    total = out.logits.new_zeros(())
    for term in TERMS:
        value = getattr(out, term)
        if value is not None:
            total = total + getattr(weights, WEIGHT_OF[term]) * value
    return total
