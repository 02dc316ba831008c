"""LTC: Locality-enhanced Token Compression, VMAD's visual projector (method.md section 4).

CLIP features on a g x g grid (plus several earlier CLIP layers) -> (g / r)^2 LLM tokens:

1. Local-Context Learner: learned position embedding, then blocks of [self-attention,
   deformable attention around each token's own position, FFN], post-norm (VMAD Eq. 19-20).
2. Spatial-Preserving Downsampler: residual depthwise-bottleneck conv blocks, adaptive average
   pool to (g / r)^2, more residual blocks (Honeybee's C-Abstractor, Cha et al., CVPR 2024).
   The result is the coarse map Q_c.
3. Coarse-to-fine injection: each coarse query attends only to the r x r fine tokens under it
   (TokenPacker's point-to-region attention, Li et al., 2024; VMAD Eq. 21).
4. Multi-level integration: those keys/values come from several CLIP layers concatenated on
   channels and projected (Linear, GELU, Linear, LayerNorm); the refined tokens are added to
   Q_c and read out to the LLM width by an MLP (VMAD Eq. 22-23).

Each part is switchable (``LtcConfig``); with all four off this is "2 x 2 average pool, then
the MLP", the ablation baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vmad_pipeline.configs import ConfigError, LtcConfig
from vmad_pipeline.models.deformable_attention import DeformableAttention
from vmad_pipeline.models.projectors.base import PooledProjector, mlp2x_gelu


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each position of a B x C x H x W map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """ResNet bottleneck with a depthwise 3 x 3 (RegNet/MobileNet style): 1x1, dw 3x3, 1x1."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = max(dim // 2, 8)
        self.net = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            LayerNorm2d(hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            LayerNorm2d(hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, dim, 1),
            LayerNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x + self.net(x))


class LocalContextBlock(nn.Module):
    """[self-attention, deformable attention, FFN], each residual with a post-norm."""

    def __init__(self, *, dim: int, heads: int, points: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.deform = DeformableAttention(dim=dim, heads=heads, points=points)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, x: torch.Tensor, reference: torch.Tensor, grid: int) -> torch.Tensor:
        """x: B x N x C (N = grid^2); reference: B x N x 2 (each token's own centre)."""
        x = self.norms[0](x + self.attn(x, x, x, need_weights=False)[0])
        value = x.transpose(1, 2).reshape(len(x), -1, grid, grid)  # (B, C, g, g)
        x = self.norms[1](x + self.deform(x, reference, value))
        return self.norms[2](x + self.ffn(x))


class RegionAttention(nn.Module):
    """Point-to-region attention: coarse query (i, j) attends to the r x r fine keys under it."""

    def __init__(self, *, dim: int, heads: int, ratio: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"projector.ltc.heads: width {dim} is not divisible by {heads}")
        self.heads, self.ratio = heads, ratio
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.LayerNorm(dim)

    def regions(self, fine: torch.Tensor) -> torch.Tensor:
        """fine: B x C x g x g -> B x (g/r)^2 x r^2 x C, row-major over coarse cells."""
        b, c, g, _ = fine.shape
        r, gc = self.ratio, g // self.ratio
        x = fine.reshape(b, c, gc, r, gc, r).permute(0, 2, 4, 3, 5, 1)  # (B, gc, gc, r, r, C)
        return x.reshape(b, gc * gc, r * r, c)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        """coarse: B x G x C (G = (g/r)^2); fine: B x C x g x g -> B x G x C."""
        b, n, c = coarse.shape
        m = self.heads
        kv = self.regions(fine)  # (B, G, r^2, C)
        q = self.q(self.norm_q(coarse)).view(b, n, m, c // m)  # (B, G, M, C/M)
        k = self.k(kv).view(b, n, -1, m, c // m)  # (B, G, r^2, M, C/M)
        v = self.v(kv).view(b, n, -1, m, c // m)
        scores = torch.einsum("bgmd,bgkmd->bgmk", q, k) * (c // m) ** -0.5
        out = torch.einsum("bgmk,bgkmd->bgmd", scores.softmax(-1), v)  # (B, G, M, C/M)
        return self.out(out.reshape(b, n, c))


class LtcProjector(PooledProjector):
    """VMAD's Locality-enhanced Token Compression; (grid / pool)^2 tokens (144 at 24 x 24)."""

    def __init__(
        self, *, in_dim: int, out_dim: int, grid: int, pool: int = 2, cfg: LtcConfig
    ) -> None:
        super().__init__(in_dim=in_dim, out_dim=out_dim, grid=grid, pool=pool)
        if cfg.multi_level and not cfg.injection:
            raise ConfigError(
                "projector.ltc.multi_level: multi-level keys/values feed the injection; "
                "set injection: true or multi_level: false"
            )
        if cfg.local_context or cfg.injection:
            if in_dim % cfg.heads:
                raise ConfigError(
                    f"projector.ltc.heads: vision width {in_dim} is not divisible by {cfg.heads}"
                )
        self.cfg = cfg
        self.level_indices = tuple(cfg.levels) if cfg.multi_level else ()
        c = in_dim
        if cfg.local_context:
            self.pos = nn.Parameter(torch.randn(1, grid * grid, c) * 0.02)
            self.blocks = nn.ModuleList(
                LocalContextBlock(dim=c, heads=cfg.heads, points=cfg.points)
                for _ in range(cfg.blocks)
            )
            centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
            yy, xx = torch.meshgrid(centres, centres, indexing="ij")
            self.register_buffer(
                "reference", torch.stack([xx, yy], -1).view(1, grid * grid, 2), persistent=False
            )
        if cfg.spatial_downsampler:
            self.pre = nn.Sequential(*(ResBlock(c) for _ in range(cfg.conv_blocks)))
            self.post = nn.Sequential(*(ResBlock(c) for _ in range(cfg.conv_blocks)))
        if cfg.injection:
            self.region = RegionAttention(dim=c, heads=cfg.heads, ratio=pool)
        if cfg.multi_level:
            self.integrate = nn.Sequential(
                nn.Linear(len(cfg.levels) * c, c), nn.GELU(), nn.Linear(c, c), nn.LayerNorm(c)
            )
        self.readout = mlp2x_gelu(c, out_dim)

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(len(x), -1, self.grid, self.grid)  # (B, C, g, g)

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """B x N x C fine tokens -> coarse map Q_c as B x (g/r)^2 x C."""
        fmap = self.to_map(x)
        if self.cfg.spatial_downsampler:
            side = self.grid // self.pool
            fmap = self.post(F.adaptive_avg_pool2d(self.pre(fmap), side))
        else:
            fmap = F.avg_pool2d(fmap, self.pool)
        return fmap.flatten(2).transpose(1, 2)

    def forward(self, features: torch.Tensor, levels: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """features: B x N x C (selected CLIP layer); levels: the ``level_indices`` hidden states,
        each B x N x C -> B x (g/r)^2 x d."""
        x = features
        if self.cfg.local_context:
            x = x + self.pos
            reference = self.reference.expand(len(x), -1, -1)
            for block in self.blocks:
                x = block(x, reference, self.grid)
        coarse = self.downsample(x)  # (B, G, C)
        if self.cfg.injection:
            if self.cfg.multi_level:
                if len(levels) != len(self.level_indices):
                    raise ValueError(
                        f"LTC expects {len(self.level_indices)} CLIP levels, got {len(levels)}"
                    )
                fine = self.integrate(torch.cat(list(levels), -1))  # (B, N, C)
            else:
                fine = features
            coarse = coarse + self.region(coarse, self.to_map(fine))
        return self.readout(coarse)
