"""The typed records a ``VmadModel`` returns: the training forward's losses and logits
(``VmadOutput``), a prediction (``Prediction``), and what its image and embedding steps give
(``ImageFeatures``, ``Embedded``: the own-mask pre-pass in ``extras.py`` reads them too, through
the model's public methods). Apart from ``vmad.py`` so that the helpers can name them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from vmad_pipeline.models.anomaly_expert import ExpertOutput


@dataclass
class VmadOutput:
    ce: torch.Tensor | None  # causal-LM loss on answer tokens
    bce: torch.Tensor | None
    dice: torch.Tensor | None
    pbsd: torch.Tensor | None  # DSSL: KL(p_v || p_t), None when DSSL is off
    patch_bce: torch.Tensor | None  # DSSL: the visual head's box BCE
    dssl_valid: torch.Tensor | None  # B bool: the samples DSSL's two terms average over
    logits: torch.Tensor  # B x T x V
    mask_logits: torch.Tensor | None  # B_seg x H x W, one per sample that holds [SEG]
    seg_index: torch.Tensor  # indices (into the batch) of the samples with a mask prediction
    expert: ExpertOutput | None = None  # Anomaly-OV's expert's maps and score, when it has one
    balance: torch.Tensor | None = None  # AMoE-LoRA's balancing loss (None: plain LoRA)


@dataclass
class Prediction:
    mask_logits: torch.Tensor  # B x H x W
    answer_ids: list[list[int]]  # generated tokens per image (forced prefix included)
    seg_found: torch.Tensor  # B bool: the model emitted [SEG] (else the last token's state)
    free_logits: torch.Tensor  # B x V: next-token logits at the first step not forced
    significance: torch.Tensor | None = None  # B x H x W: the expert's map (None: no expert)
    expert_score: torch.Tensor | None = None  # B: the expert's image score
    regions: torch.Tensor | None = None  # B x H x W: the regions the region tokens read
    reference_maps: torch.Tensor | None = None  # B x h x w: distances to the references (cue)


class ImageFeatures(NamedTuple):
    visual: torch.Tensor  # B x T x d: the visual tokens
    clip_global: torch.Tensor  # B x C: the selected layer's mean feature (DSSL's Meta-Net)
    features: torch.Tensor  # B x N x C: the selected layer (region tokens pool it)
    frozen: tuple[torch.Tensor, ...]  # the tower's frozen levels (the expert reads them)


class Embedded(NamedTuple):
    embeds: torch.Tensor  # B x T x d: the input embeddings, placeholders filled
    clip_global: torch.Tensor
    visual: torch.Tensor
    expert: ExpertOutput | None
