"""Projectors: CLIP patch features -> LLM tokens, behind one interface.

Every projector knows its output token count before the forward (``num_tokens``), so the
prompt can be laid out (image placeholder tokens) before any image is seen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vmad_pipeline.configs import PROJECTORS, ConfigError, ProjectorConfig


class Projector(nn.Module):
    """Base: ``forward(features: B x N x C on a g x g grid) -> B x num_tokens x d``."""

    def __init__(self, *, in_dim: int, out_dim: int, grid: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.grid = in_dim, out_dim, grid

    @property
    def num_tokens(self) -> int:
        raise NotImplementedError


def _mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    # LLaVA-1.5 "mlp2x_gelu": Linear, GELU, Linear.
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class MlpProjector(Projector):
    """LLaVA-1.5 two-layer GELU MLP; one token per patch (576 at 24 x 24)."""

    def __init__(self, *, in_dim: int, out_dim: int, grid: int) -> None:
        super().__init__(in_dim=in_dim, out_dim=out_dim, grid=grid)
        self.mlp = _mlp(in_dim, out_dim)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)  # (B, N, d)


class AvgPoolProjector(Projector):
    """r x r average pooling on the patch grid, then the MLP (144 tokens at 24 x 24, r = 2)."""

    def __init__(self, *, in_dim: int, out_dim: int, grid: int, pool: int = 2) -> None:
        super().__init__(in_dim=in_dim, out_dim=out_dim, grid=grid)
        if grid % pool:
            raise ConfigError(f"projector.pool: grid {grid} is not divisible by pool {pool}")
        self.pool = pool
        self.mlp = _mlp(in_dim, out_dim)

    @property
    def num_tokens(self) -> int:
        return (self.grid // self.pool) ** 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, n, c = features.shape
        x = features.transpose(1, 2).reshape(b, c, self.grid, self.grid)  # (B, C, g, g)
        x = F.avg_pool2d(x, self.pool).flatten(2).transpose(1, 2)  # (B, (g/r)^2, C)
        return self.mlp(x)


def build_projector(cfg: ProjectorConfig, *, in_dim: int, out_dim: int, grid: int) -> Projector:
    if cfg.name == "mlp":
        return MlpProjector(in_dim=in_dim, out_dim=out_dim, grid=grid)
    if cfg.name == "avgpool":
        return AvgPoolProjector(in_dim=in_dim, out_dim=out_dim, grid=grid, pool=cfg.pool)
    raise ConfigError(
        f"projector.name: unknown projector {cfg.name!r}; known: {', '.join(PROJECTORS)}"
    )
