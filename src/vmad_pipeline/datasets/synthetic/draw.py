"""Drawing primitives shared by the synthetic textures, objects and defects: coordinate grids,
fractal noise, jittered colours. Images are (H, W, 3) float32 in [0, 1], fields (H, W)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

Array = np.ndarray
# A class renderer: (size, class_rng, image_rng) -> (image HxWx3 float32 in [0, 1], footprint HxW bool,
# background HxWx3 float32 or None for textures that fill the frame).
Renderer = Callable[
    [int, np.random.Generator, np.random.Generator], tuple[Array, Array, Array | None]
]


def grid(size: int) -> tuple[Array, Array]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx  # (H, W) each


def rotate(xx: Array, yy: Array, cx: float, cy: float, angle: float) -> tuple[Array, Array]:
    c, s = np.cos(angle), np.sin(angle)
    return (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c


def normalise(a: Array) -> Array:
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo + 1e-8)).astype(np.float32)


def value_noise(rng: np.random.Generator, size: int, cells: int, octaves: int) -> Array:
    """Perlin-like fractal noise in [0, 1]: bicubic-upsampled random grids, octaves halving in weight."""
    out = np.zeros((size, size), np.float32)
    amp = 1.0
    for octave in range(octaves):
        n = cells * 2**octave + 1
        grid = rng.random((n, n), dtype=np.float32)
        out += amp * np.asarray(
            Image.fromarray(grid).resize((size, size), Image.BICUBIC), np.float32
        )
        amp *= 0.5
    return normalise(out)


def tint(
    rng: np.random.Generator, base: tuple[float, float, float] | Array, jitter: float
) -> Array:
    return np.clip(np.asarray(base, np.float32) + rng.normal(0.0, jitter, 3), 0.0, 1.0).astype(
        np.float32
    )


def paint_field(field: Array, c0: Array, c1: Array) -> Array:
    return (c0 + field[..., None] * (c1 - c0)).astype(np.float32)  # (H, W, 3)


def fill_image(size: int, colour: Array) -> Array:
    return np.broadcast_to(colour, (size, size, 3)).astype(np.float32)


def pick_palette(
    crng: np.random.Generator, palette: list[tuple[float, float, float]], jitter: float
) -> Array:
    return tint(crng, palette[int(crng.integers(len(palette)))], jitter)
