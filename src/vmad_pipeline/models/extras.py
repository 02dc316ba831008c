"""The tokens a model may read after its visual tokens: Anomaly-OV's adverb and suspicious tokens
(``anomaly_expert.py``) and IAD-Unify's region tokens (``region_tokens.py``), in the order
``prompts.ImageSlots`` lays their placeholders out. Kept out of ``vmad.py`` so that the model
reads as VMAD; docs/experts.md says which part is the seeds' and which is ours."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from vmad_pipeline.configs import ModelConfig
from vmad_pipeline.models.anomaly_expert import ADVERBS, AnomalyExpert, ExpertOutput
from vmad_pipeline.models.outputs import Embedded, ImageFeatures
from vmad_pipeline.models.region_tokens import RegionTokens


@dataclass
class Extras:
    """What the expert and the region tokens add for a batch."""

    tokens: torch.Tensor  # B x E x d: the embeddings of the placeholders after the visual tokens
    expert: ExpertOutput | None  # the expert's maps and score (None without an expert)


def chosen_levels(n: int, indices: tuple[int, ...]) -> tuple[int, ...]:
    """The expert's levels among a tower's ``n`` frozen ones: ``indices``, or the last 4."""
    return indices or tuple(range(max(0, n - 4), n))


def expert_levels(frozen: tuple[torch.Tensor, ...], indices: tuple[int, ...]) -> tuple:
    """The expert's inputs: the chosen levels (:func:`chosen_levels`) of the frozen ones."""
    return tuple(frozen[i] for i in chosen_levels(len(frozen), indices))


def adverb_embeddings(
    embed: nn.Embedding,
    adverb_ids: list[torch.Tensor],
    score: torch.Tensor,
    thresholds: tuple[float, float],
) -> torch.Tensor:
    """B x 1 x d: each image's adverb ("highly" at a score >= thresholds[0], "moderately" >=
    thresholds[1], else "slightly") as the mean input embedding of its tokens. The score is
    detached: the adverb is a word chosen by a threshold, not a path for gradients."""
    table = torch.stack([embed(ids).mean(0) for ids in adverb_ids])  # (3, d), ADVERBS' order
    high, moderate = thresholds
    s = score.detach()
    choice = torch.where(s >= high, 0, torch.where(s >= moderate, 1, 2))
    return table[choice][:, None]


def map_on_grid(significance: torch.Tensor) -> torch.Tensor:
    """B x N -> B x side x side (the expert's map on its token grid)."""
    side = math.isqrt(significance.shape[1])
    return significance.view(len(significance), side, side)


def upsample_map(significance: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The expert's map (B x N on its grid) at ``size``, bilinear: B x H x W."""
    grid = map_on_grid(significance)[:, None].float()
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]


def _regions(masks, keep, out: ExpertOutput | None, features, from_expert: bool) -> torch.Tensor:
    """The given regions, the predicted one where ``keep`` is False (see :func:`extra_tokens`)."""
    side = math.isqrt(features.shape[1])
    size = (side, side) if masks is None else tuple(masks.shape[-2:])
    if from_expert and out is not None:
        predicted = upsample_map(out.significance.detach(), size)
    else:
        predicted = features.new_zeros(len(features), *size)
    if masks is None:
        return predicted
    if keep is None:
        return masks
    return torch.where(keep.bool()[:, None, None], masks.to(predicted.dtype), predicted)


def extra_tokens(
    *,
    expert: AnomalyExpert | None,
    region: RegionTokens | None,
    levels: tuple[torch.Tensor, ...],
    features: torch.Tensor,
    region_masks: torch.Tensor | None,
    region_keep: torch.Tensor | None = None,
    embed: nn.Embedding,
    adverb_ids: list[torch.Tensor],
    thresholds: tuple[float, float],
    region_from_expert: bool = False,
) -> Extras:
    """[adverb, suspicious tokens] from the expert, then the region tokens, for one batch.

    ``features``: B x N x C the selected vision features (the region's are ROI-pooled from them);
    ``region_masks``: B x H x W in [0, 1], the regions; the rows where ``region_keep`` (B bool)
    is False, or all rows when no masks are given, take the predicted region: the expert's map
    where ``region_from_expert``, else none (an empty mask)."""
    parts, out = [], None
    if expert is not None:
        out = expert(levels)
        adverb = adverb_embeddings(embed, adverb_ids, out.score, thresholds)
        parts += [adverb, out.tokens]
    if region is not None:
        region_masks = _regions(region_masks, region_keep, out, features, region_from_expert)
        b, n, c = features.shape
        side = math.isqrt(n)
        grid = features.transpose(1, 2).reshape(b, c, side, side)
        parts.append(region(grid, region_masks.to(features.dtype)))
    if not parts:
        return Extras(tokens=features.new_zeros(len(features), 0, embed.embedding_dim), expert=None)
    dtype = embed.weight.dtype
    return Extras(tokens=torch.cat([p.to(dtype) for p in parts], 1), expert=out)


# --------------------------------------------------------------------------- regions
# The regions a model's region tokens read (functions of a ``VmadModel``: its forward and
# predict call them; here so that ``vmad.py`` reads as VMAD).


@runtime_checkable
class OwnMaskModel(Protocol):
    """What the functions below read of a model, public names only (``VmadModel`` is one): its
    config, LLM, region tokens and [SEG] id, its input embedding and its [SEG] masks. It is also
    a ``routing.RoutedModel`` (the own-mask pass routes with neutral evidence)."""

    config: ModelConfig
    llm: PreTrainedModel
    region: RegionTokens | None
    seg_token_id: int

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        images_clip: torch.Tensor,
        *,
        region_masks: torch.Tensor | None = None,
        region_keep: torch.Tensor | None = None,
        image: ImageFeatures | None = None,
    ) -> Embedded: ...

    def seg_masks(
        self,
        last: torch.Tensor,
        input_ids: torch.Tensor,
        images_sam: torch.Tensor,
        masks: torch.Tensor | None,
        sam_emb: torch.Tensor | None,
        size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def training_regions(model: OwnMaskModel, masks, oracle, own):
    """(regions, keep) for ``embed_inputs`` in training: the true masks where ``oracle``, the
    predicted region elsewhere (the expert's map is filled in by ``embed_inputs``; the model's
    own mask, ``own``, is drawn by :func:`own_regions`). (None, None) without region tokens."""
    if model.region is None or masks is None:
        return None, None
    truth = masks.float()
    if model.config.region_tokens.source != "own_mask":
        return truth, oracle
    if oracle is None:
        return own, None
    return torch.where(oracle.bool()[:, None, None], truth, own), None


@torch.no_grad()
def own_regions(
    model: OwnMaskModel, input_ids, attention_mask, images_clip, images_sam, image, sam_emb, size
) -> torch.Tensor:
    """B x H x W: the mask each row's first [SEG] draws when the row reads no region (the region
    tokens' ``own_mask`` source, AMoE-LoRA's ``own_mask`` evidence; zeros for rows without
    [SEG]). Right-padded rows (training) and left-padded ones (inference) alike: positions follow
    the attention mask. The routers read neutral evidence and record nothing here."""
    from vmad_pipeline.models.routing import routed

    embedded = model.embed_inputs(input_ids, images_clip, image=image)
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    with routed(model, None, record=False):
        out = model.llm(
            inputs_embeds=embedded.embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            output_hidden_states=True,
        )
        seg_index, logits = model.seg_masks(
            out.hidden_states[-1], input_ids, images_sam, None, sam_emb, size
        )
    regions = torch.zeros(len(input_ids), *size, device=input_ids.device)
    if logits is not None:
        regions[seg_index] = logits.float().sigmoid()
    return regions


def own_prediction(
    model: OwnMaskModel,
    input_ids,
    attention_mask,
    images_clip,
    images_sam,
    image,
    size,
    sam_emb=None,
) -> torch.Tensor:
    """B x H x W: the mask the model draws at a [SEG] appended to each (left-padded) prompt, with
    no region: what ``predict`` reads as its own mask before answering."""
    seg = torch.full_like(input_ids[:, :1], model.seg_token_id)
    ids = torch.cat([input_ids, seg], 1)
    att = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], 1)
    return own_regions(model, ids, att, images_clip, images_sam, image, sam_emb, size)


def predicted_regions(model: OwnMaskModel, given, own):
    """The regions ``predict`` reads: ``given``, else the model's own mask (``own``, from
    :func:`own_prediction`) for the ``own_mask`` source, else None (the expert's map, or none)."""
    if given is not None or model.region is None:
        return given
    return own if model.config.region_tokens.source == "own_mask" else None


__all__ = ["ADVERBS", "Extras", "OwnMaskModel", "adverb_embeddings", "extra_tokens", "upsample_map"]
