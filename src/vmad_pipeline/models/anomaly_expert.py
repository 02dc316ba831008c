"""Anomaly-OV's anomaly expert: Look-Twice Feature Matching and the Visual Token Selector.

Xu et al., "Towards Zero-Shot Anomaly Detection and Reasoning with Multimodal Large Language
Models" (CVPR 2025), as the seed deck (``shared/seeds/001_...``) describes it:

- **Multi-level features**: several levels of the vision tower, each through an adaptor that
  brings it to the expert's width.
- **LTFM** (per level): two learnable embeddings, abnormal and normal, are combined with the
  image's own tokens (selected through a linear layer) and turned by an MLP into a class-aware
  abnormality and normality description; every token's cosine similarity to the two, through a
  softmax, is its probability of being anomalous: the level's significance map m_i.
- **Visual Token Selector**: the levels' maps averaged (m), the tokens multiplied by it (normal
  tokens go to zero), average-pooled on their grid; a Q-Former (queries: the pooled tokens; keys
  and values: the original tokens) condenses them into the suspicious tokens the LLM reads after
  its ordinary visual tokens, announced by "with <adv> suspicious feature:".

Where the deck is silent, ours: the image's tokens enter a description as their mean after the
linear selection (one context vector per image); each level has its own adaptor and LTFM; the
"original" tokens the selector weighs are the last chosen level's, adapted; the Q-Former is one
pre-norm cross-attention block with a feed-forward layer; the expert's image score is the mean
of the top 10% of m (one token of noise does not decide an image); the adverb comes from two
score thresholds (parameters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ADVERBS = ("highly", "moderately", "slightly")


@dataclass(frozen=True)
class ExpertShape:
    """The sizes an expert is built with (from the model's config and its vision tower)."""

    level_widths: tuple[int, ...]  # channels of each chosen level of the vision tower
    width: int = 64  # the expert's own width
    llm_width: int = 64  # the suspicious tokens' width (the LLM's)
    pool: int = 2  # spatial average pooling of the weighted tokens (queries = (side/pool)^2)
    heads: int = 2
    temperature: float = 0.07  # of the cosine similarities before the softmax (CLIP's)
    top_fraction: float = 0.1  # the image score: mean of this share of the highest m


@dataclass
class ExpertOutput:
    level_maps: torch.Tensor  # B x L x N: P(anomalous) of every token at every level
    significance: torch.Tensor  # B x N: their mean over levels (m)
    score: torch.Tensor  # B: the expert's image score
    tokens: torch.Tensor  # B x Q x llm_width: the suspicious visual tokens


class LTFM(nn.Module):
    """Look-Twice Feature Matching on one level's tokens (B x N x d) -> P(anomalous), B x N."""

    def __init__(self, width: int, temperature: float) -> None:
        super().__init__()
        self.select = nn.Linear(width, width)  # which of the image's features enter
        self.embeddings = nn.Parameter(torch.randn(2, width) * 0.02)  # abnormal, normal
        self.mlp = nn.Sequential(
            nn.Linear(2 * width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )
        self.temperature = temperature

    def descriptions(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x 2 x d: the abnormality and normality descriptions of each image."""
        context = self.select(tokens).mean(1)  # (B, d)
        b, d = context.shape
        pair = torch.cat(
            [self.embeddings[None].expand(b, 2, d), context[:, None].expand(b, 2, d)], -1
        )
        return self.mlp(pair)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        desc = F.normalize(self.descriptions(tokens), dim=-1)  # (B, 2, d)
        sims = torch.einsum("bnd,bkd->bnk", F.normalize(tokens, dim=-1), desc)
        return (sims / self.temperature).softmax(-1)[..., 0]


class QFormer(nn.Module):
    """One pre-norm cross-attention block (queries attend to the keys / values) and an MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_out = (nn.LayerNorm(width) for _ in range(3))
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(memory)
        x = queries + self.attention(self.norm_q(queries), kv, kv, need_weights=False)[0]
        return x + self.mlp(self.norm_out(x))


def select_tokens(tokens: torch.Tensor, significance: torch.Tensor, pool: int) -> torch.Tensor:
    """The Visual Token Selector's queries: tokens (B x N x d on a square grid) weighted by
    their significance (B x N), average-pooled ``pool`` x ``pool`` -> B x (N / pool^2) x d."""
    b, n, d = tokens.shape
    side = math.isqrt(n)
    if side * side != n or side % pool:
        raise ValueError(f"{n} tokens are not a square grid divisible by pool {pool}")
    grid = (tokens * significance[..., None]).transpose(1, 2).reshape(b, d, side, side)
    return F.avg_pool2d(grid, pool).flatten(2).transpose(1, 2)


def image_score(significance: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """Mean of the top ``top_fraction`` of each row of B x N (at least one token)."""
    k = max(1, math.ceil(top_fraction * significance.shape[1]))
    return significance.topk(k, dim=1).values.mean(1)


def adverb(score: float, thresholds: tuple[float, float]) -> str:
    """ "highly" at or above ``thresholds[0]``, "moderately" at or above ``thresholds[1]``,
    else "slightly" (the prompt: "with <adv> suspicious feature:")."""
    high, moderate = thresholds
    if not high >= moderate:
        raise ValueError(
            f"adverb thresholds must be (high, moderate) with high >= moderate: {thresholds}"
        )
    return ADVERBS[0] if score >= high else ADVERBS[1] if score >= moderate else ADVERBS[2]


class AnomalyExpert(nn.Module):
    """Chosen levels of the vision tower (a tuple of B x N x C_i, one grid) -> ExpertOutput."""

    def __init__(self, shape: ExpertShape) -> None:
        super().__init__()
        self.shape = shape
        w = shape.width
        self.adaptors = nn.ModuleList(nn.Linear(c, w) for c in shape.level_widths)
        self.ltfm = nn.ModuleList(LTFM(w, shape.temperature) for _ in shape.level_widths)
        self.qformer = QFormer(w, shape.heads)
        self.out = nn.Linear(w, shape.llm_width)

    def num_tokens(self, grid: int) -> int:
        """Suspicious tokens for a ``grid`` x ``grid`` token grid."""
        return (grid // self.shape.pool) ** 2

    def forward(self, levels: tuple[torch.Tensor, ...]) -> ExpertOutput:
        if len(levels) != len(self.adaptors):
            raise ValueError(f"the expert takes {len(self.adaptors)} levels, got {len(levels)}")
        adapted = [a(x) for a, x in zip(self.adaptors, levels, strict=True)]
        maps = torch.stack([f(x) for f, x in zip(self.ltfm, adapted, strict=True)], 1)
        significance = maps.mean(1)
        original = adapted[-1]
        queries = select_tokens(original, significance, self.shape.pool)
        tokens = self.out(self.qformer(queries, original))
        return ExpertOutput(
            level_maps=maps,
            significance=significance,
            score=image_score(significance, self.shape.top_fraction),
            tokens=tokens,
        )
