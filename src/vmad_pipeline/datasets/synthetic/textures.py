"""Texture classes (fabrics, wood, leather, tiles): patterns that fill the whole frame.

Each renderer takes ``(size, class_rng, image_rng)``: the class stream fixes what every image of
the class shares (palette, period), the image stream what varies (phase, jitter). No background:
the footprint is the whole image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vmad_pipeline.datasets.synthetic.draw import (
    Array,
    Renderer,
    grid,
    normalise,
    paint_field,
    pick_palette,
    rotate,
    tint,
    value_noise,
)


def _woven_cloth(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, None]:
    base = tint(
        rng,
        pick_palette(crng, [(0.55, 0.55, 0.58), (0.25, 0.3, 0.5), (0.7, 0.62, 0.45)], 0.05),
        0.02,
    )
    period = crng.uniform(6, 9) * size / 128 * rng.uniform(0.95, 1.05)
    yy, xx = grid(size)
    u, v = rotate(xx, yy, *rng.uniform(0, size, 2), rng.uniform(-0.08, 0.08))
    a, b = u / period, v / period
    over = (np.floor(a) + np.floor(b)) % 2 == 0
    # Thread cross-sections: warp over weft on alternating cells.
    profile = np.where(over, np.sin(np.pi * (b % 1)), np.sin(np.pi * (a % 1)))
    fibre = ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), 0.6)
    field = 0.55 + 0.4 * profile + 0.25 * (fibre - fibre.mean())
    return (base * field[..., None]).astype(np.float32), np.ones((size, size), bool), None


def _carpet(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, None]:
    hue = pick_palette(crng, [(0.6, 0.2, 0.2), (0.3, 0.45, 0.3), (0.5, 0.45, 0.4)], 0.06)
    c0, c1 = tint(rng, hue * 0.55, 0.02), tint(rng, np.clip(hue * 1.25, 0, 1), 0.02)
    blotch = value_noise(rng, size, 4, 3)
    tufts = ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), 0.8)
    # Pile tufts, clearly visible.
    tufts = np.clip(0.5 + (tufts - tufts.mean()) / (4 * tufts.std()), 0, 1)
    return paint_field(0.5 * blotch + 0.5 * tufts, c0, c1), np.ones((size, size), bool), None


def _striped_fabric(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, None]:
    c0 = tint(
        rng,
        pick_palette(crng, [(0.85, 0.85, 0.8), (0.2, 0.25, 0.45), (0.8, 0.7, 0.3)], 0.05),
        0.02,
    )
    c1 = tint(
        rng,
        pick_palette(crng, [(0.6, 0.15, 0.15), (0.15, 0.15, 0.2), (0.3, 0.5, 0.7)], 0.05),
        0.02,
    )
    period = crng.uniform(10, 18) * size / 128
    angle = float(crng.choice([0.0, np.pi / 2, np.pi / 4])) + rng.uniform(-0.05, 0.05)
    yy, xx = grid(size)
    u, _ = rotate(xx, yy, size / 2, size / 2, angle)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.tanh(4 * np.sin(2 * np.pi * u / period + phase))
    weave = ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), 0.5)
    img = paint_field(stripes.astype(np.float32), c0, c1) * (0.9 + 0.2 * weave[..., None])
    return img.astype(np.float32), np.ones((size, size), bool), None


def _wood(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, None]:
    light = tint(
        rng, pick_palette(crng, [(0.8, 0.6, 0.4), (0.65, 0.45, 0.3), (0.9, 0.8, 0.6)], 0.04), 0.02
    )
    dark = np.clip(light * rng.uniform(0.55, 0.7), 0, 1)
    yy, xx = grid(size)
    _, v = rotate(xx, yy, size / 2, size / 2, rng.uniform(-0.1, 0.1))
    warp = value_noise(rng, size, 2, 3)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (v / (crng.uniform(9, 14) * size / 128) + 2.0 * warp))
    grain = normalise(
        ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), (0.5, 6.0))
    )
    return (
        paint_field((0.7 * rings + 0.3 * grain).astype(np.float32), dark, light),
        np.ones((size, size), bool),
        None,
    )


def _leather(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, None]:
    base = tint(
        rng,
        pick_palette(crng, [(0.45, 0.28, 0.15), (0.2, 0.18, 0.17), (0.55, 0.15, 0.12)], 0.04),
        0.02,
    )
    height = 0.6 * value_noise(rng, size, 10, 2)
    height += 0.4 * normalise(
        ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), 1.5)
    )
    gy, gx = np.gradient(height * size / 16)
    angle = rng.uniform(0, 2 * np.pi)
    shade = np.clip(0.85 + 0.6 * (gx * np.cos(angle) + gy * np.sin(angle)), 0.5, 1.3)
    return (base * shade[..., None]).astype(np.float32), np.ones((size, size), bool), None


def _tile(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, None]:
    glaze = tint(
        rng,
        pick_palette(crng, [(0.85, 0.85, 0.82), (0.35, 0.55, 0.65), (0.75, 0.55, 0.4)], 0.04),
        0.02,
    )
    grout = tint(rng, (0.45, 0.43, 0.4), 0.03)
    period = crng.uniform(36, 56) * size / 128
    width = max(2.0, 0.07 * period)
    yy, xx = grid(size)
    ox, oy = rng.uniform(0, period, 2)
    tx, ty = (xx + ox) / period, (yy + oy) / period
    n = int(size / period) + 3
    jitter = rng.normal(0.0, 0.03, (n, n, 3)).astype(np.float32)
    per_tile = glaze + jitter[ty.astype(int), tx.astype(int)]
    gloss = 0.92 + 0.12 * ((tx % 1) + (ty % 1)) / 2
    in_tile = (np.minimum(tx % 1, 1 - tx % 1) * period > width / 2) & (
        np.minimum(ty % 1, 1 - ty % 1) * period > width / 2
    )
    img = np.where(in_tile[..., None], per_tile * gloss[..., None], grout)
    return img.astype(np.float32), np.ones((size, size), bool), None


# class name -> (family, renderer), in the order of configs.ingest.SYNTHETIC_CLASSES
TEXTURES: dict[str, tuple[str, Renderer]] = {
    "woven_cloth": ("texture", _woven_cloth),
    "carpet": ("texture", _carpet),
    "striped_fabric": ("texture", _striped_fabric),
    "wood": ("texture", _wood),
    "leather": ("texture", _leather),
    "tile": ("tile", _tile),
}
