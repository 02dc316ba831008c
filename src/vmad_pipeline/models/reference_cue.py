"""The model reads normal references of the product it inspects (docs/references.md).

A reference is a normal image of the same product: k given by the user (``shots``), or the other
images of the same product in the input (``batch``). Each patch of the inspected image is
compared with the references' patches on the vision tower's frozen features (the
nearest-normal-patch distance of ``models/references.py``, PatchCore / AnomalyDINO's few-shot
scoring); the resulting distance map reaches the model twice:

* **mask prompt**: a small conv net turns it into SAM's dense prompt embedding, added where SAM
  adds its no-mask embedding (SAM's mask decoder takes a dense mask prompt as an input; Kirillov
  et al., 2023), and a per-pixel affine map of it is added to the decoder's low-resolution mask
  logits (a skip: in a development run with the dense prompt alone, seed 0, 600 CPU steps
  moved the unseen-class image AUROC at k = 4 from 0.863 to 0.902 while the map alone scored
  0.992), so the mask follows "unlike the references here" (without it, the ablation's pixel
  AUROC and AUPRO stay at k = 0's; README, "References");
* **evidence**: an MLP turns each visual token's share of the map (its cell's peak and mean,
  relative to the image's median) and the image's peak into an embedding added to that visual
  token, so P(yes) and the answer read "this is normal here" before the first answer token
  (the mask evidence is read only after [SEG], after the Yes / No).

The dense prompt's and the evidence's last layers start at zero; the skip starts as "a patch
unlike every reference patch is a defect" (:data:`SKIP_INIT`). A row without references (k = 0)
gets nothing from any of them: the zero-shot model. What makes the model trust the cue is in the
training data (``training.samples.shared_structure``). Ours; the comparison with normal
templates in the spirit of MMAD's 1-shot protocol and AnomalyGPT's few-shot mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vmad_pipeline.configs.model import ReferenceCueConfig
from vmad_pipeline.models.references import level_features, nearest_distance, patches
from vmad_pipeline.models.sam import MaskCue

N_TOKEN = 6  # cell peak, cell mean, cell peak - median, image peak, peak - median, has references
# The distances (unit-length features: normal patches ~0.2-0.45 from their nearest reference
# patch, defects 0.8-1.2 on the default's unseen classes) times GAIN: O(1-10) inputs. Unscaled,
# Adam's steps of ~lr moved the zero-initialised weights to ~0.1 in 600 steps, a cue of < 0.1
# logit the model never used (measured: the skip's weights 0.007 and 0.10 after training).
GAIN = 10.0
# The skip's initial weight on (distance - the image's median) x GAIN: a patch unlike every
# reference patch starts as evidence of a defect (+5 logits at a distance 1.0 above the median).
SKIP_INIT = 0.5


class CueOutput(NamedTuple):
    maps: torch.Tensor  # B x h x w: each patch's distance to the nearest reference patch (0: none)
    has: torch.Tensor  # B bool: the row had references
    tokens: torch.Tensor | None  # B x T x d_llm added to the visual tokens (evidence)
    mask: MaskCue | None  # added to SAM's dense prompt and low-resolution logits (mask prompt)


def _zero_last(net: nn.Sequential) -> nn.Sequential:
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def pooled(maps: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B x h x w -> (peak, mean) of each cell of a side x side grid, each B x side x side."""
    x = maps[:, None]
    if x.shape[-1] < side:  # coarser than the grid: spread, as to_grid does
        x = F.interpolate(x, (side, side), mode="bilinear", align_corners=False)
    return F.adaptive_max_pool2d(x, side)[:, 0], F.adaptive_avg_pool2d(x, side)[:, 0]


class ReferenceCue(nn.Module):
    def __init__(self, cfg: ReferenceCueConfig, *, d_sam: int, d_llm: int, sam_grid: int) -> None:
        super().__init__()
        self.cfg, self.sam_grid = cfg, sam_grid
        h = cfg.hidden
        self.dense = (
            _zero_last(
                nn.Sequential(nn.Conv2d(3, h, 3, padding=1), nn.GELU(), nn.Conv2d(h, d_sam, 1))
            )
            if cfg.mask_prompt
            else None
        )
        # SAM's low-resolution logits: (d, d - median) -> one logit per pixel
        self.skip = None
        if cfg.mask_prompt:
            self.skip = _zero_last(nn.Sequential(nn.Conv2d(2, 1, 1)))
            with torch.no_grad():
                self.skip[0].weight[0, 1] = SKIP_INIT
        self.token = (
            _zero_last(nn.Sequential(nn.Linear(N_TOKEN, h), nn.GELU(), nn.Linear(h, d_llm)))
            if cfg.evidence
            else None
        )

    def features(self, levels: Sequence[torch.Tensor], image_size: int) -> torch.Tensor:
        """The frozen levels of N images at ``image_size`` -> N x C x g x g patch features
        (unit length; g = image_size / stride): the one feature rule of the comparison."""
        grid = max(1, image_size // self.cfg.stride)
        return level_features(levels, self.cfg.levels, grid, normalise=True).float()

    @staticmethod
    def distance_maps(
        query: torch.Tensor, memories: Sequence[torch.Tensor | None]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query: B x C x h x w; memories: one M_i x C tensor of reference patches per row (None
        or empty: no references) -> (B x h x w distances, zeros where none; B bool)."""
        b, _, h, w = query.shape
        if len(memories) != b:
            raise ValueError(f"{b} images but {len(memories)} reference memories")
        maps = query.new_zeros(b, h, w)
        has = torch.zeros(b, dtype=torch.bool, device=query.device)
        for i, memory in enumerate(memories):
            if memory is None or not len(memory):
                continue
            maps[i] = nearest_distance(patches(query[i : i + 1]), memory.to(query)).view(h, w)
            has[i] = True
        return maps, has

    def forward(self, maps: torch.Tensor, has: torch.Tensor, n_tokens: int, dtype) -> CueOutput:
        """The cue's two inputs to the model from the distance maps (B x h x w) of rows with
        references (``has``); ``n_tokens``: the visual tokens (a square grid gets one value per
        cell, another count the image's peak everywhere)."""
        gate = has.to(maps.dtype)
        scaled = maps * GAIN
        median = scaled.flatten(1).median(1).values[:, None, None]
        peak = scaled.flatten(1).amax(1)[:, None, None]
        mask = tokens = None
        if self.dense is not None:
            top, mean = pooled(scaled, self.sam_grid)
            x = torch.stack([top, mean, top - median], 1)
            dense = self.dense(x) * gate[:, None, None, None]
            fine = F.interpolate(
                scaled[:, None], (4 * self.sam_grid,) * 2, mode="bilinear", align_corners=False
            )
            logits = self.skip(torch.cat([fine, fine - median[:, None]], 1))
            mask = MaskCue(dense.to(dtype), (logits * gate[:, None, None, None]).to(dtype))
        if self.token is not None:
            side = int(round(n_tokens**0.5))
            if side * side == n_tokens:
                top, mean = pooled(scaled, side)
            else:
                top = mean = peak.expand(-1, 1, n_tokens)
            cells = [top, mean, top - median, peak.expand_as(top), (peak - median).expand_as(top)]
            feats = torch.stack([*cells, gate[:, None, None].expand_as(top)], -1)
            tokens = self.token(feats.flatten(1, 2)) * gate[:, None, None]
        return CueOutput(maps, has, None if tokens is None else tokens.to(dtype), mask)
