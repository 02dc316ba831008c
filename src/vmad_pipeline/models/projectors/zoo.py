"""The projector zoo of Table IV besides LTC: LLaVA-1.5's MLP, average pooling, the
Perceiver resampler and MobileVLM-v2's LDP-v2."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.models.projectors.base import PooledProjector, Projector, mlp2x_gelu


class MlpProjector(Projector):
    """LLaVA-1.5 two-layer GELU MLP; one token per patch (576 at 24 x 24)."""

    def __init__(self, *, in_dim: int, out_dim: int, grid: int) -> None:
        super().__init__(in_dim=in_dim, out_dim=out_dim, grid=grid)
        self.mlp = mlp2x_gelu(in_dim, out_dim)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def forward(self, features: torch.Tensor, levels: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        return self.mlp(features)  # (B, N, d)


class AvgPoolProjector(PooledProjector):
    """r x r average pooling on the patch grid, then the MLP (144 tokens at 24 x 24, r = 2)."""

    def __init__(self, *, in_dim: int, out_dim: int, grid: int, pool: int = 2) -> None:
        super().__init__(in_dim=in_dim, out_dim=out_dim, grid=grid, pool=pool)
        self.mlp = mlp2x_gelu(in_dim, out_dim)

    def forward(self, features: torch.Tensor, levels: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        b, n, c = features.shape
        x = features.transpose(1, 2).reshape(b, c, self.grid, self.grid)  # (B, C, g, g)
        x = F.avg_pool2d(x, self.pool).flatten(2).transpose(1, 2)  # (B, (g/r)^2, C)
        return self.mlp(x)


class ResamplerProjector(PooledProjector):
    """Perceiver/Flamingo resampler: learned queries cross-attend to the patch features.

    (Alayrac et al., Flamingo, 2022.) ``(grid / pool)^2`` queries, so it emits as many tokens
    as ``avgpool`` (144 at 24 x 24, pool 2), each able to look at the whole image.
    """

    def __init__(
        self, *, in_dim: int, out_dim: int, grid: int, pool: int = 2, depth: int = 1, heads: int = 4
    ) -> None:
        super().__init__(in_dim=in_dim, out_dim=out_dim, grid=grid, pool=pool)
        if in_dim % heads:
            raise ConfigError(
                f"projector.heads: vision width {in_dim} is not divisible by {heads} heads"
            )
        self.queries = nn.Parameter(torch.randn(self.num_tokens, in_dim) * in_dim**-0.5)
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, in_dim))
        self.attn = nn.ModuleList(
            nn.MultiheadAttention(in_dim, heads, batch_first=True) for _ in range(depth)
        )
        self.ffn = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(in_dim),
                nn.Linear(in_dim, 4 * in_dim),
                nn.GELU(),
                nn.Linear(4 * in_dim, in_dim),
            )
            for _ in range(depth)
        )
        self.norm_q = nn.ModuleList(nn.LayerNorm(in_dim) for _ in range(depth))
        self.norm_kv = nn.LayerNorm(in_dim)
        self.out = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))

    def forward(self, features: torch.Tensor, levels: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        kv = self.norm_kv(features + self.pos)  # (B, N, C)
        q = self.queries.unsqueeze(0).expand(len(features), -1, -1)  # (B, T, C)
        for attn, ffn, norm in zip(self.attn, self.ffn, self.norm_q, strict=True):
            q = q + attn(norm(q), kv, kv, need_weights=False)[0]
            q = q + ffn(q)
        return self.out(q)  # (B, T, d)


class LDPv2Projector(PooledProjector):
    """MobileVLM-v2's lightweight downsample projector (Chu et al., 2024): MLP, 2 x 2 average
    pool, then a depthwise 3 x 3 convolution as position encoding with a residual."""

    def __init__(self, *, in_dim: int, out_dim: int, grid: int, pool: int = 2) -> None:
        super().__init__(in_dim=in_dim, out_dim=out_dim, grid=grid, pool=pool)
        self.mlp = mlp2x_gelu(in_dim, out_dim)
        self.peg = nn.Conv2d(out_dim, out_dim, 3, padding=1, groups=out_dim)

    def forward(self, features: torch.Tensor, levels: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        b = len(features)
        x = (
            self.mlp(features).transpose(1, 2).reshape(b, self.out_dim, self.grid, self.grid)
        )  # (B, d, g, g)
        x = F.avg_pool2d(x, self.pool)  # (B, d, g/r, g/r)
        x = x + self.peg(x)
        return x.flatten(2).transpose(1, 2)  # (B, (g/r)^2, d)
