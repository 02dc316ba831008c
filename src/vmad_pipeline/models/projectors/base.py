"""The projector interface: CLIP patch features -> LLM tokens.

Every projector knows its output token count before the forward (``num_tokens``), so the
prompt can be laid out (image placeholder tokens) before any image is seen.
"""

from __future__ import annotations

from torch import nn

from vmad_pipeline.configs import ConfigError


class Projector(nn.Module):
    """Base: ``forward(features: B x N x C on a g x g grid, levels) -> B x num_tokens x d``.

    ``levels`` are the extra CLIP hidden states named by ``level_indices`` (multi-level
    projectors such as LTC); the others ignore them.
    """

    level_indices: tuple[int, ...] = ()

    def __init__(self, *, in_dim: int, out_dim: int, grid: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.grid = in_dim, out_dim, grid

    @property
    def num_tokens(self) -> int:
        raise NotImplementedError


def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    # LLaVA-1.5 "mlp2x_gelu": Linear, GELU, Linear.
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class PooledProjector(Projector):
    """Base of the projectors that emit one token per pool x pool cell: (grid / pool)^2."""

    def __init__(self, *, in_dim: int, out_dim: int, grid: int, pool: int) -> None:
        super().__init__(in_dim=in_dim, out_dim=out_dim, grid=grid)
        if grid % pool:
            raise ConfigError(f"projector.pool: grid {grid} is not divisible by pool {pool}")
        self.pool = pool

    @property
    def num_tokens(self) -> int:
        return (self.grid // self.pool) ** 2
