"""Projectors: CLIP patch features -> LLM tokens, behind one interface (``base.Projector``).

:func:`build_projector` turns a :class:`~vmad_pipeline.configs.ProjectorConfig` into one of the
zoo (``mlp``, ``avgpool``, ``resampler``, ``ldpv2``; ``zoo.py``) or VMAD's LTC (``ltc.py``).
"""

from __future__ import annotations

from vmad_pipeline.configs import PROJECTORS, ConfigError, ProjectorConfig
from vmad_pipeline.models.projectors.base import PooledProjector, Projector, mlp2x_gelu
from vmad_pipeline.models.projectors.ltc import LtcProjector
from vmad_pipeline.models.projectors.zoo import (
    AvgPoolProjector,
    LDPv2Projector,
    MlpProjector,
    ResamplerProjector,
)

__all__ = [
    "AvgPoolProjector",
    "LDPv2Projector",
    "LtcProjector",
    "MlpProjector",
    "PooledProjector",
    "Projector",
    "ResamplerProjector",
    "build_projector",
    "mlp2x_gelu",
]


def build_projector(cfg: ProjectorConfig, *, in_dim: int, out_dim: int, grid: int) -> Projector:
    if cfg.name == "mlp":
        return MlpProjector(in_dim=in_dim, out_dim=out_dim, grid=grid)
    if cfg.name == "avgpool":
        return AvgPoolProjector(in_dim=in_dim, out_dim=out_dim, grid=grid, pool=cfg.pool)
    if cfg.name == "resampler":
        return ResamplerProjector(
            in_dim=in_dim,
            out_dim=out_dim,
            grid=grid,
            pool=cfg.pool,
            depth=cfg.depth,
            heads=cfg.heads,
        )
    if cfg.name == "ldpv2":
        return LDPv2Projector(in_dim=in_dim, out_dim=out_dim, grid=grid, pool=cfg.pool)
    if cfg.name == "ltc":
        return LtcProjector(in_dim=in_dim, out_dim=out_dim, grid=grid, pool=cfg.pool, cfg=cfg.ltc)
    raise ConfigError(
        f"projector.name: unknown projector {cfg.name!r}; known: {', '.join(PROJECTORS)}"
    )
