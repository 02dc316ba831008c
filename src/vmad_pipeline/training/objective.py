"""The training objective: how the model's loss terms are weighted (method.md section 3).

``L = w_txt * CE + w_bce * BCE + w_dice * DICE + w_pbsd * PBSD + w_patch_bce * box BCE
+ w_balance * BALANCE``; a term the batch does not produce (no [SEG] sample, DSSL off, plain
LoRA: no AMoE-LoRA balancing loss) counts as zero.
"""

from __future__ import annotations

import torch

from vmad_pipeline.configs import LossWeights
from vmad_pipeline.models.vmad import VmadOutput
from vmad_pipeline.prompts import IGNORE

# VmadOutput fields, in LossWeights' order
TERMS = ("ce", "bce", "dice", "pbsd", "patch_bce", "balance")
WEIGHT_OF = {
    "ce": "txt",
    "bce": "bce",
    "dice": "dice",
    "pbsd": "pbsd",
    "patch_bce": "patch_bce",
    "balance": "balance",
}


def weighted_loss(out: VmadOutput, weights: LossWeights) -> torch.Tensor:
    """The weighted sum of the loss terms present in ``out`` (a scalar)."""
    present = {t: getattr(out, t) for t in TERMS if getattr(out, t) is not None}
    return combine(present, weights, out.logits)


# The count each term is a mean over (VmadOutput's means): answer tokens, [SEG] masks, the
# boxes of the images DSSL scored, and micro-batches (the balancing loss is one value per forward:
# the step's is its mean over every rank's micro-batches).
COUNTED_BY = {
    "ce": "tokens",
    "bce": "masks",
    "dice": "masks",
    "pbsd": "boxes",
    "patch_bce": "boxes",
    "balance": "batches",
}


def answer_tokens(labels: torch.Tensor) -> float:
    """The tokens the LLM's cross-entropy is a mean over: labels after the causal shift that are
    not ``prompts.IGNORE``."""
    return float((labels[:, 1:] != IGNORE).sum())


def local_counts(out: VmadOutput, labels: torch.Tensor, boxes: int) -> dict[str, float]:
    """How many items each of this micro-batch's means is over."""
    valid = 0 if out.dssl_valid is None else int(out.dssl_valid.sum())
    return {
        "tokens": answer_tokens(labels),
        "masks": float(len(out.seg_index)) if out.mask_logits is not None else 0.0,
        "boxes": float(valid * boxes),
        "batches": 1.0 if out.balance is not None else 0.0,
    }


def shares(
    out: VmadOutput, local: dict[str, float], total: dict[str, float]
) -> dict[str, torch.Tensor]:
    """Each term's share of the optimiser step's value: ``mean x local count / total count``
    (``total``: the count over every rank and micro-batch of the step). Summed over ranks and
    micro-batches, a term is its mean over the whole global batch, whatever the split: N
    processes or accumulation steps learn as one process with the whole batch (the rule behind
    transformers' ``num_items_in_batch``)."""
    out_shares = {}
    for term in TERMS:
        value, kind = getattr(out, term), COUNTED_BY[term]
        if value is None:
            continue
        factor = local[kind] / total[kind] if local[kind] and total[kind] else 0.0
        if factor or torch.isfinite(value):
            # a term over no item counts zero, but stays in the graph: DDP expects a gradient,
            # if zero, for every weight the forward pass used
            out_shares[term] = value * factor
    return out_shares


def combine(
    parts: dict[str, torch.Tensor], weights: LossWeights, like: torch.Tensor
) -> torch.Tensor:
    """The weighted sum of term shares (zero when none)."""
    total = like.new_zeros(())
    for term, value in parts.items():
        total = total + getattr(weights, WEIGHT_OF[term]) * value
    return total
