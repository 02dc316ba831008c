"""The embedded default dataset: procedurally generated industrial images with exact defect masks.

Everything is deterministic from a seed and written in the MVTec AD layout, so the synthetic data
goes through the same reader (:mod:`vmad_pipeline.datasets.mvtec`) as real data.

Each image is seeded from ``(seed, class, split, defect, index)`` so that changing the counts of one
class leaves every other image unchanged. Rendering is in three independent random streams: the
normal appearance, the defect, and the "camera" (lighting gradient, sensor noise). A defect image is
therefore exactly its normal twin plus the defect, and its mask covers every pixel the defect changed.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm.auto import tqdm

from vmad_pipeline.io.atomic import atomic_directory

logger = logging.getLogger(__name__)

Array = np.ndarray
# A class renderer: (size, class_rng, image_rng) -> (image HxWx3 float32 in [0, 1], footprint HxW bool,
# background HxWx3 float32 or None for textures that fill the frame).
Renderer = Callable[
    [int, np.random.Generator, np.random.Generator], tuple[Array, Array, Array | None]
]


class DefectFn(Protocol):
    """A defect: (image, footprint, background or None, rng, *, scale) -> (damaged image, mask).

    ``scale`` multiplies the defect's area (lengths, widths and radii by ``sqrt(scale)``); it is
    applied after the random draws, so the draws are the same at every scale.
    """

    def __call__(
        self,
        img: Array,
        fp: Array,
        bg: Array | None,
        rng: np.random.Generator,
        *,
        scale: float = 1.0,
    ) -> tuple[Array, Array]: ...


# ----------------------------------------------------------------------------------------------- helpers
def _grid(size: int) -> tuple[Array, Array]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx  # (H, W) each


def _rotate(xx: Array, yy: Array, cx: float, cy: float, angle: float) -> tuple[Array, Array]:
    c, s = np.cos(angle), np.sin(angle)
    return (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c


def _normalise(a: Array) -> Array:
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo + 1e-8)).astype(np.float32)


def _value_noise(rng: np.random.Generator, size: int, cells: int, octaves: int) -> Array:
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
    return _normalise(out)


def _colour(
    rng: np.random.Generator, base: tuple[float, float, float] | Array, jitter: float
) -> Array:
    return np.clip(np.asarray(base, np.float32) + rng.normal(0.0, jitter, 3), 0.0, 1.0).astype(
        np.float32
    )


def _paint(field: Array, c0: Array, c1: Array) -> Array:
    return (c0 + field[..., None] * (c1 - c0)).astype(np.float32)  # (H, W, 3)


def _fill(size: int, colour: Array) -> Array:
    return np.broadcast_to(colour, (size, size, 3)).astype(np.float32)


def _pick_palette(
    crng: np.random.Generator, palette: list[tuple[float, float, float]], jitter: float
) -> Array:
    return _colour(crng, palette[int(crng.integers(len(palette)))], jitter)


def _object_pose(size: int, rng: np.random.Generator) -> tuple[float, float, float]:
    cx, cy = size / 2 + rng.normal(0.0, 0.04 * size, 2)
    return float(cx), float(cy), float(rng.uniform(0, 2 * np.pi))


# ----------------------------------------------------------------------------------------------- textures
def _woven_cloth(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, None]:
    base = _colour(
        rng,
        _pick_palette(crng, [(0.55, 0.55, 0.58), (0.25, 0.3, 0.5), (0.7, 0.62, 0.45)], 0.05),
        0.02,
    )
    period = crng.uniform(6, 9) * size / 128 * rng.uniform(0.95, 1.05)
    yy, xx = _grid(size)
    u, v = _rotate(xx, yy, *rng.uniform(0, size, 2), rng.uniform(-0.08, 0.08))
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
    hue = _pick_palette(crng, [(0.6, 0.2, 0.2), (0.3, 0.45, 0.3), (0.5, 0.45, 0.4)], 0.06)
    c0, c1 = _colour(rng, hue * 0.55, 0.02), _colour(rng, np.clip(hue * 1.25, 0, 1), 0.02)
    blotch = _value_noise(rng, size, 4, 3)
    tufts = ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), 0.8)
    # Pile tufts, clearly visible.
    tufts = np.clip(0.5 + (tufts - tufts.mean()) / (4 * tufts.std()), 0, 1)
    return _paint(0.5 * blotch + 0.5 * tufts, c0, c1), np.ones((size, size), bool), None


def _striped_fabric(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, None]:
    c0 = _colour(
        rng,
        _pick_palette(crng, [(0.85, 0.85, 0.8), (0.2, 0.25, 0.45), (0.8, 0.7, 0.3)], 0.05),
        0.02,
    )
    c1 = _colour(
        rng,
        _pick_palette(crng, [(0.6, 0.15, 0.15), (0.15, 0.15, 0.2), (0.3, 0.5, 0.7)], 0.05),
        0.02,
    )
    period = crng.uniform(10, 18) * size / 128
    angle = float(crng.choice([0.0, np.pi / 2, np.pi / 4])) + rng.uniform(-0.05, 0.05)
    yy, xx = _grid(size)
    u, _ = _rotate(xx, yy, size / 2, size / 2, angle)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.tanh(4 * np.sin(2 * np.pi * u / period + phase))
    weave = ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), 0.5)
    img = _paint(stripes.astype(np.float32), c0, c1) * (0.9 + 0.2 * weave[..., None])
    return img.astype(np.float32), np.ones((size, size), bool), None


def _wood(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, None]:
    light = _colour(
        rng, _pick_palette(crng, [(0.8, 0.6, 0.4), (0.65, 0.45, 0.3), (0.9, 0.8, 0.6)], 0.04), 0.02
    )
    dark = np.clip(light * rng.uniform(0.55, 0.7), 0, 1)
    yy, xx = _grid(size)
    _, v = _rotate(xx, yy, size / 2, size / 2, rng.uniform(-0.1, 0.1))
    warp = _value_noise(rng, size, 2, 3)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (v / (crng.uniform(9, 14) * size / 128) + 2.0 * warp))
    grain = _normalise(
        ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), (0.5, 6.0))
    )
    return (
        _paint((0.7 * rings + 0.3 * grain).astype(np.float32), dark, light),
        np.ones((size, size), bool),
        None,
    )


def _leather(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, None]:
    base = _colour(
        rng,
        _pick_palette(crng, [(0.45, 0.28, 0.15), (0.2, 0.18, 0.17), (0.55, 0.15, 0.12)], 0.04),
        0.02,
    )
    height = 0.6 * _value_noise(rng, size, 10, 2)
    height += 0.4 * _normalise(
        ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), 1.5)
    )
    gy, gx = np.gradient(height * size / 16)
    angle = rng.uniform(0, 2 * np.pi)
    shade = np.clip(0.85 + 0.6 * (gx * np.cos(angle) + gy * np.sin(angle)), 0.5, 1.3)
    return (base * shade[..., None]).astype(np.float32), np.ones((size, size), bool), None


def _tile(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, None]:
    glaze = _colour(
        rng,
        _pick_palette(crng, [(0.85, 0.85, 0.82), (0.35, 0.55, 0.65), (0.75, 0.55, 0.4)], 0.04),
        0.02,
    )
    grout = _colour(rng, (0.45, 0.43, 0.4), 0.03)
    period = crng.uniform(36, 56) * size / 128
    width = max(2.0, 0.07 * period)
    yy, xx = _grid(size)
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


# ----------------------------------------------------------------------------------------------- objects
_BACKGROUNDS = [(0.12, 0.12, 0.13), (0.8, 0.8, 0.78), (0.2, 0.3, 0.45), (0.9, 0.88, 0.8)]
_METALS = [(0.7, 0.7, 0.72), (0.75, 0.6, 0.3), (0.55, 0.55, 0.6)]


def _background(
    size: int, crng: np.random.Generator, rng: np.random.Generator, avoid: Array
) -> Array:
    """A plain background whose colour is clearly different from the object's (``avoid``)."""
    order = crng.permutation(len(_BACKGROUNDS))
    choice = next(
        (i for i in order if abs(np.mean(_BACKGROUNDS[i]) - float(np.mean(avoid))) > 0.3), order[0]
    )
    return _fill(size, _colour(rng, _BACKGROUNDS[choice], 0.02))


def _washer(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    metal_class = _pick_palette(crng, _METALS, 0.03)
    metal, bg = _colour(rng, metal_class, 0.02), _background(size, crng, rng, metal_class)
    cx, cy, angle = _object_pose(size, rng)
    r_out = size * rng.uniform(0.32, 0.37)
    r_in = r_out * crng.uniform(0.38, 0.48) * rng.uniform(0.97, 1.03)
    yy, xx = _grid(size)
    d, theta = np.hypot(xx - cx, yy - cy), np.arctan2(yy - cy, xx - cx)
    ring = (d <= r_out) & (d >= r_in)
    shade = 0.7 + 0.22 * np.cos(theta - angle) + 0.05 * np.sin(d * 2.2)
    img = np.where(ring[..., None], metal * shade[..., None], bg)
    return img.astype(np.float32), ring, bg


def _bottle_cap(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    paint_class = _pick_palette(crng, [(0.75, 0.1, 0.1), (0.15, 0.35, 0.7), (0.9, 0.75, 0.1)], 0.04)
    paint, bg = _colour(rng, paint_class, 0.02), _background(size, crng, rng, paint_class)
    cx, cy, angle = _object_pose(size, rng)
    radius = size * rng.uniform(0.33, 0.38)
    yy, xx = _grid(size)
    d, theta = np.hypot(xx - cx, yy - cy), np.arctan2(yy - cy, xx - cx)
    # Knurled rim.
    edge = radius * (1 + 0.025 * np.sin(int(crng.integers(18, 30)) * (theta - angle)))
    cap = d <= edge
    shade = np.where(
        d > 0.8 * radius, 0.7 + 0.2 * np.cos(theta - angle), 0.95 - 0.15 * (d / radius) ** 2
    )
    shade = np.where(np.abs(d - 0.55 * radius) < max(1.0, size / 100), 0.75, shade)  # embossed ring
    img = np.where(cap[..., None], paint * shade[..., None], bg)
    return img.astype(np.float32), cap, bg


def _hex_nut(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    metal_class = _pick_palette(crng, _METALS, 0.03)
    metal, bg = _colour(rng, metal_class, 0.02), _background(size, crng, rng, metal_class)
    cx, cy, angle = _object_pose(size, rng)
    radius = size * rng.uniform(0.32, 0.37)
    yy, xx = _grid(size)
    proj = np.stack(
        [
            (xx - cx) * np.cos(angle + k * np.pi / 3) + (yy - cy) * np.sin(angle + k * np.pi / 3)
            for k in range(3)
        ]
    )
    apothem = radius * np.cos(np.pi / 6)
    d = np.hypot(xx - cx, yy - cy)
    body = (np.abs(proj).max(axis=0) <= apothem) & (d >= 0.45 * radius)
    facet = np.argmax(np.abs(proj), axis=0) + 3 * (
        np.take_along_axis(proj, np.argmax(np.abs(proj), 0)[None], 0)[0] < 0
    )
    shade = 0.62 + 0.06 * facet.astype(np.float32)  # each of the six faces lit differently
    shade = np.where(d < 0.55 * radius, 0.5, shade)  # thread ring
    img = np.where(body[..., None], metal * shade[..., None], bg)
    return img.astype(np.float32), body, bg


def _screw(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    metal_class = _pick_palette(crng, _METALS, 0.03)
    metal, bg = _colour(rng, metal_class, 0.02), _background(size, crng, rng, metal_class)
    cx, cy, angle = _object_pose(size, rng)
    length, half_w = size * rng.uniform(0.58, 0.66), size * crng.uniform(0.05, 0.065)
    pitch = size * crng.uniform(0.035, 0.05)
    yy, xx = _grid(size)
    u, v = _rotate(xx, yy, cx, cy, angle)
    head_len = 0.18 * length
    taper = np.clip((u + length / 2) / (0.15 * length), 0.15, 1.0)  # pointed tip
    shaft = (u >= -length / 2) & (u <= length / 2 - head_len) & (np.abs(v) <= half_w * taper)
    head = (u > length / 2 - head_len) & (u <= length / 2) & (np.abs(v) <= 2.0 * half_w)
    across = np.cos(np.clip(v / (2.0 * half_w), -1, 1) * np.pi / 2)
    thread = 0.6 + 0.4 * np.abs(np.sin(np.pi * u / pitch))
    shade = np.where(head, 0.55 + 0.45 * across, (0.5 + 0.5 * across) * thread)
    body = shaft | head
    img = np.where(body[..., None], metal * shade[..., None], bg)
    return img.astype(np.float32), body, bg


def _capsule(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    c0_class = _pick_palette(crng, [(0.9, 0.9, 0.88), (0.85, 0.3, 0.2), (0.3, 0.5, 0.8)], 0.03)
    c1_class = _pick_palette(crng, [(0.95, 0.8, 0.2), (0.2, 0.6, 0.35), (0.9, 0.9, 0.9)], 0.03)
    c0, c1 = _colour(rng, c0_class, 0.015), _colour(rng, c1_class, 0.015)
    bg = _background(size, crng, rng, (c0_class + c1_class) / 2)
    cx, cy, angle = _object_pose(size, rng)
    half_len, radius = size * rng.uniform(0.22, 0.26), size * crng.uniform(0.12, 0.15)
    yy, xx = _grid(size)
    u, v = _rotate(xx, yy, cx, cy, angle)
    # To the axis segment.
    dist = np.hypot(np.clip(np.abs(u), 0, None) - np.clip(np.abs(u), 0, half_len), v)
    body = dist <= radius
    shade = (
        0.7
        + 0.3 * np.cos(np.clip(v / radius, -1, 1) * np.pi / 2)
        + 0.15 * np.exp(-((v + 0.4 * radius) ** 2) / (0.02 * radius**2 + 1))
    )
    img = np.where(body[..., None], np.where((u < 0)[..., None], c0, c1) * shade[..., None], bg)
    return np.clip(img, 0, 1).astype(np.float32), body, bg


def _cable(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    jacket_class = _pick_palette(
        crng, [(0.15, 0.15, 0.15), (0.2, 0.35, 0.75), (0.85, 0.5, 0.1)], 0.03
    )
    jacket, bg = _colour(rng, jacket_class, 0.02), _background(size, crng, rng, jacket_class)
    radius = size * crng.uniform(0.07, 0.09)
    p0, p2 = rng.uniform(0.05, 0.25, 2) * size, rng.uniform(0.75, 0.95, 2) * size
    if rng.random() < 0.5:  # run along the other diagonal
        p0[1], p2[1] = size - p0[1], size - p2[1]
    p1 = size / 2 + rng.normal(0.0, 0.15 * size, 2)
    t = np.linspace(0, 1, 48)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    line = Image.new("L", (size, size), 0)
    ImageDraw.Draw(line).line([tuple(p) for p in curve], fill=255, width=1)
    dist = ndimage.distance_transform_edt(np.asarray(line) == 0).astype(np.float32)
    body = dist <= radius
    shade = 0.55 + 0.45 * np.cos(np.clip(dist / radius, 0, 1) * np.pi / 2)
    img = np.where(body[..., None], jacket * shade[..., None] + 0.08, bg)
    return np.clip(img, 0, 1).astype(np.float32), body, bg


def _pcb(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    board_class = _pick_palette(crng, [(0.1, 0.45, 0.2), (0.1, 0.25, 0.5), (0.1, 0.1, 0.1)], 0.03)
    board = _colour(rng, board_class, 0.015)
    bg = _background(
        size, crng, rng, np.array((0.9, 0.9, 0.9)) if board_class.mean() < 0.3 else board_class
    )
    to8 = lambda c: tuple(int(x) for x in np.clip(np.asarray(c) * 255, 0, 255))  # noqa: E731
    margin = size * rng.uniform(0.08, 0.13)
    canvas = Image.new("RGB", (size, size), to8(bg[0, 0]))
    outline = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    lo, hi = margin, size - margin
    draw.rectangle([lo, lo, hi, hi], fill=to8(board))
    ImageDraw.Draw(outline).rectangle([lo, lo, hi, hi], fill=255)
    copper, width = to8((0.8, 0.6, 0.3)), max(1, size // 64)
    for _ in range(int(rng.integers(6, 11))):  # Manhattan traces ending in pads
        x, y = rng.uniform(lo + 4, hi - 4, 2)
        points = [(x, y)]
        for step in range(int(rng.integers(2, 4))):
            if step % 2 == 0:
                x = float(np.clip(x + rng.uniform(-0.4, 0.4) * size, lo + 4, hi - 4))
            else:
                y = float(np.clip(y + rng.uniform(-0.4, 0.4) * size, lo + 4, hi - 4))
            points.append((x, y))
        draw.line(points, fill=copper, width=width)
        for px, py in (points[0], points[-1]):
            draw.ellipse(
                [px - 2 * width, py - 2 * width, px + 2 * width, py + 2 * width], fill=copper
            )
    for _ in range(int(rng.integers(1, 3))):  # ICs with pins
        w, h = rng.uniform(0.12, 0.22, 2) * size
        x, y = rng.uniform(lo + 3, hi - w - 3), rng.uniform(lo + 3, hi - h - 3)
        for k in range(4):
            px = x + (k + 0.5) * w / 4
            draw.line([(px, y - 2), (px, y + h + 2)], fill=to8((0.75, 0.75, 0.75)), width=width)
        draw.rectangle([x, y, x + w, y + h], fill=to8((0.08, 0.08, 0.09)))
    for _ in range(int(rng.integers(2, 5))):  # small passives
        w, h = size * 0.06, size * 0.03
        x, y = rng.uniform(lo + 3, hi - w - 3), rng.uniform(lo + 3, hi - h - 3)
        draw.rectangle([x, y, x + w, y + h], fill=to8((0.8, 0.7, 0.55)))
    angle = float(rng.uniform(-8, 8))
    shift = tuple(float(s) for s in rng.normal(0, 0.03 * size, 2))
    canvas = canvas.rotate(angle, Image.BILINEAR, translate=shift, fillcolor=to8(bg[0, 0]))
    outline = outline.rotate(angle, Image.NEAREST, translate=shift, fillcolor=0)
    return np.asarray(canvas, np.float32) / 255, np.asarray(outline) > 0, bg


# class name -> (family, renderer)
_CLASSES: dict[str, tuple[str, Renderer]] = {
    "woven_cloth": ("texture", _woven_cloth),
    "carpet": ("texture", _carpet),
    "striped_fabric": ("texture", _striped_fabric),
    "wood": ("texture", _wood),
    "leather": ("texture", _leather),
    "tile": ("tile", _tile),
    "washer": ("round", _washer),
    "bottle_cap": ("round", _bottle_cap),
    "hex_nut": ("polygon", _hex_nut),
    "screw": ("elongated", _screw),
    "capsule": ("elongated", _capsule),
    "cable": ("elongated", _cable),
    "pcb": ("board", _pcb),
}
AVAILABLE_CLASSES: tuple[str, ...] = tuple(_CLASSES)
CLASS_FAMILIES: dict[str, str] = {name: family for name, (family, _) in _CLASSES.items()}


# ----------------------------------------------------------------------------------------------- defects
def _inner_distance(footprint: Array) -> Array:
    """Distance of each footprint pixel to the nearest pixel outside it (the image border counts as outside)."""
    return ndimage.distance_transform_edt(np.pad(footprint, 1))[1:-1, 1:-1].astype(np.float32)


def _pick(dist: Array, rng: np.random.Generator, margin: float) -> tuple[float, float]:
    """A random (x, y) at least ``margin`` inside the footprint, or as deep as the footprint allows."""
    ok = dist >= min(margin, float(dist.max()))
    idx = rng.choice(np.flatnonzero(ok))
    y, x = divmod(int(idx), dist.shape[1])
    return float(x), float(y)


def _pick_edge(footprint: Array, dist: Array, rng: np.random.Generator) -> tuple[float, float]:
    """A random (x, y) on the footprint's outline (away from the image border)."""
    size = footprint.shape[0]
    yy, xx = _grid(size)
    inside = (xx > 3) & (xx < size - 4) & (yy > 3) & (yy < size - 4)
    edge = footprint & (dist <= 1.5) & inside
    idx = rng.choice(np.flatnonzero(edge if edge.any() else footprint))
    y, x = divmod(int(idx), size)
    return float(x), float(y)


def _radius(
    size: int,
    rng: np.random.Generator,
    lo: float,
    hi: float,
    scale: float = 1.0,
    fits: float = math.inf,
) -> float:
    """Radius of a disc covering a random fraction in [lo, hi] of the image area, times ``scale``.

    ``scale`` multiplies the area (the radius by ``sqrt(scale)``); the scaled radius is clipped to
    ``fits`` (what the footprint allows), but never below the unscaled radius, so scale 1 is unchanged.
    """
    radius = float(np.sqrt(rng.uniform(lo, hi) * size * size / np.pi))
    return _grow(radius, scale, fits)


def _grow(length: float, scale: float, fits: float = math.inf) -> float:
    """A length for a defect whose area is multiplied by ``scale``: ``length * sqrt(scale)``, clipped
    to ``fits`` but never below ``length`` (so scale 1 returns ``length`` exactly)."""
    return float(min(length * math.sqrt(scale), max(length, fits)))


def _stroke(width: int, scale: float) -> int:
    """A line width for a defect whose area is multiplied by ``scale``: rounded, at least 1 px."""
    return max(1, int(round(width * math.sqrt(scale))))


def _grow_about(
    polylines: list[list[tuple[float, float]]], centre: Array, scale: float
) -> list[list[tuple[float, float]]]:
    """Polylines stretched about ``centre`` by ``sqrt(scale)`` (exactly unchanged at scale 1)."""
    k = math.sqrt(scale) - 1.0
    cx, cy = float(centre[0]), float(centre[1])
    return [[(x + k * (x - cx), y + k * (y - cy)) for x, y in line] for line in polylines]


def _apply_contrast(img: Array, damaged: Array, mask: Array, contrast: float) -> Array:
    """Multiply a defect's change to the normal image by ``contrast``, inside its mask, clipped to [0, 1]."""
    if contrast == 1.0:
        return damaged
    amplified = np.clip(img + contrast * (damaged - img), 0.0, 1.0)
    return np.where(mask[..., None], amplified, img).astype(np.float32)


def _contrast(local: Array, rng: np.random.Generator, lo: float = 0.3, hi: float = 0.55) -> Array:
    """A colour clearly lighter or darker than ``local`` (whichever has room), slightly tinted."""
    sign = -1.0 if float(local.mean()) > 0.5 else 1.0
    return np.clip(local + sign * rng.uniform(lo, hi) + rng.normal(0.0, 0.05, 3), 0, 1).astype(
        np.float32
    )


def _draw_lines(size: int, polylines: list[list[tuple[float, float]]], width: int) -> Array:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for points in polylines:
        draw.line(points, fill=255, width=width, joint="curve")
    return np.asarray(canvas) > 0


def _blend(img: Array, mask: Array, colour: Array | Array, alpha: Array | float) -> Array:
    alpha = np.asarray(alpha, np.float32)
    if alpha.ndim == 2:
        alpha = alpha[..., None]
    out = img * (1 - alpha) + colour * alpha
    return np.where(mask[..., None], out, img).astype(np.float32)


def _soft_blob(size: int, rng: np.random.Generator, cx: float, cy: float, radius: float) -> Array:
    """An irregular soft blob (alpha in [0, 1]) of roughly the given radius."""
    yy, xx = _grid(size)
    u, v = _rotate(xx, yy, cx, cy, rng.uniform(0, np.pi))
    aspect = rng.uniform(0.6, 1.6)
    d = np.hypot(u / (radius * np.sqrt(aspect)), v * np.sqrt(aspect) / radius)
    d = d + 0.5 * (_value_noise(rng, size, 6, 2) - 0.5)
    return np.clip((1.15 - d) / 0.45, 0, 1).astype(np.float32)


def _scratch(
    img: Array, fp: Array, bg: Array | None, rng: np.random.Generator, *, scale: float = 1.0
) -> tuple[Array, Array]:
    size = img.shape[0]
    dist = _inner_distance(fp)
    cx, cy = _pick(dist, rng, _grow(3.0, scale, float(dist.max())))  # deeper when larger
    length, theta, bend = rng.uniform(0.25, 0.5) * size, rng.uniform(0, np.pi), rng.normal(0, 0.25)
    length = _grow(length, scale)
    d, n = np.array([np.cos(theta), np.sin(theta)]), np.array([-np.sin(theta), np.cos(theta)])
    points = [
        tuple(np.array([cx, cy]) + t * length * d + bend * (t * t - 0.25) * length * n)
        for t in np.linspace(-0.5, 0.5, 9)
    ]
    width = _stroke(int(rng.integers(1, 3)) * max(1, size // 128), scale)
    mask = _draw_lines(size, [points], width) & fp
    local = img[mask].mean(axis=0) if mask.any() else img.mean(axis=(0, 1))
    return _blend(img, mask, _contrast(local, rng), rng.uniform(0.75, 0.95)), mask


def _crack(
    img: Array, fp: Array, bg: Array | None, rng: np.random.Generator, *, scale: float = 1.0
) -> tuple[Array, Array]:
    size = img.shape[0]
    dist = _inner_distance(fp)
    x, y = _pick(dist, rng, _grow(4.0, scale, float(dist.max())))  # deeper when larger
    step, heading = max(2.0, size / 40), rng.uniform(0, 2 * np.pi)
    trunk = [(x, y)]
    for _ in range(int(rng.uniform(0.2, 0.4) * size / step)):  # a jagged random walk
        heading += rng.normal(0, 0.5)
        x, y = x + step * np.cos(heading), y + step * np.sin(heading)
        trunk.append((x, y))
    lines = [trunk]
    for _ in range(int(rng.integers(0, 3))):  # side branches
        bx, by = trunk[int(rng.integers(1, len(trunk)))]
        h = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
        branch = [(bx, by)]
        for _ in range(int(rng.integers(2, 5))):
            h += rng.normal(0, 0.4)
            bx, by = bx + step * np.cos(h), by + step * np.sin(h)
            branch.append((bx, by))
        lines.append(branch)
    lines = _grow_about(lines, np.mean(trunk, axis=0), scale)
    mask = (
        _draw_lines(size, lines, _stroke(max(1, size // 128) * int(rng.integers(1, 3)), scale)) & fp
    )
    local = img[mask].mean(axis=0) if mask.any() else img.mean(axis=(0, 1))
    return _blend(img, mask, local * rng.uniform(0.1, 0.3), 0.9), mask


def _hole(
    img: Array, fp: Array, bg: Array | None, rng: np.random.Generator, *, scale: float = 1.0
) -> tuple[Array, Array]:
    size = img.shape[0]
    dist = _inner_distance(fp)
    radius = min(_radius(size, rng, 0.003, 0.02, scale), max(2.0, float(dist.max()) - 1.5))
    cx, cy = _pick(dist, rng, radius + 1)
    yy, xx = _grid(size)
    d, theta = np.hypot(xx - cx, yy - cy), np.arctan2(yy - cy, xx - cx)
    edge = radius * (1 + 0.12 * np.sin(int(rng.integers(2, 5)) * theta + rng.uniform(0, 6.3)))
    mask = (d <= edge) & fp
    interior = np.full(3, rng.uniform(0.02, 0.12), np.float32)
    local = img[mask].mean(axis=0) if mask.any() else img.mean(axis=(0, 1))
    # Torn rim.
    rim = _grow(max(1.0, size / 128), scale)
    colour = np.where((d > edge - rim)[..., None], local * 0.45, interior)
    return _blend(img, mask, colour, 1.0), mask


def _stain(
    img: Array, fp: Array, bg: Array | None, rng: np.random.Generator, *, scale: float = 1.0
) -> tuple[Array, Array]:
    size = img.shape[0]
    dist = _inner_distance(fp)
    radius = _radius(size, rng, 0.005, 0.04, scale, float(dist.max()))
    cx, cy = _pick(dist, rng, radius * 0.7)
    alpha = _soft_blob(size, rng, cx, cy, radius) * rng.uniform(0.7, 0.95)
    mask = (alpha > 0.25) & fp
    local = img[mask].mean(axis=0) if mask.any() else img.mean(axis=(0, 1))
    tints = [(0.55, 0.4, 0.25), (0.35, 0.35, 0.38), (1.25, 1.1, 0.5), (0.8, 0.45, 0.25)]
    colour = np.clip(local * _colour(rng, tints[int(rng.integers(len(tints)))], 0.05), 0, 1)
    if np.abs(colour - local).mean() < 0.2:  # too close to the surface: darken instead
        colour = _contrast(local, rng)
    return _blend(img, mask, colour, alpha), mask


def _contamination(
    img: Array, fp: Array, bg: Array | None, rng: np.random.Generator, *, scale: float = 1.0
) -> tuple[Array, Array]:
    size = img.shape[0]
    dist = _inner_distance(fp)
    cx, cy = _pick(dist, rng, _grow(3.0, scale, float(dist.max())))  # deeper when larger
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    px_scale = size / 128
    if rng.random() < 0.35:  # a fibre or hair
        heading, points = rng.uniform(0, 2 * np.pi), [(cx, cy)]
        for _ in range(int(rng.integers(6, 12))):
            heading += rng.normal(0, 0.35)
            points.append(
                (
                    points[-1][0] + 3 * px_scale * np.cos(heading),
                    points[-1][1] + 3 * px_scale * np.sin(heading),
                )
            )
        (points,) = _grow_about([points], np.mean(points, axis=0), scale)
        width = _stroke(max(1, int(round(px_scale))), scale)
        draw.line(points, fill=255, width=width, joint="curve")
    else:  # a cluster of particles
        # The spread grows with the scale as far as the footprint allows (exactly 1 at scale 1).
        spread = _grow(6 * px_scale, scale, float(dist.max())) / (6 * px_scale)
        for _ in range(int(rng.integers(2, 8))):
            dx, dy = rng.normal(0, 6 * px_scale), rng.normal(0, 6 * px_scale)
            px, py = cx + dx * spread, cy + dy * spread
            r = _grow(rng.uniform(1.0, 3.5) * px_scale, scale)
            draw.ellipse([px - r, py - r, px + r, py + r], fill=255)
    mask = (np.asarray(canvas) > 0) & fp
    local = img[mask].mean(axis=0) if mask.any() else img.mean(axis=(0, 1))
    # Foreign matter: the colour farthest from the surface.
    candidates = rng.random((12, 3)).astype(np.float32)
    colour = candidates[int(np.argmax(np.abs(candidates - local).sum(axis=1)))]
    return _blend(img, mask, colour, 0.95), mask


def _missing_part(
    img: Array, fp: Array, bg: Array | None, rng: np.random.Generator, *, scale: float = 1.0
) -> tuple[Array, Array]:
    size = img.shape[0]
    dist = _inner_distance(fp)
    yy, xx = _grid(size)
    radius = _radius(size, rng, 0.006, 0.035, scale, float(dist.max()))
    if bg is not None:  # a bite out of the object's outline, showing the background
        cx, cy = _pick_edge(fp, dist, rng)
        mask = (np.hypot(xx - cx, yy - cy) <= radius) & fp
        return np.where(mask[..., None], bg, img).astype(np.float32), mask
    cx, cy = _pick(dist, rng, radius)  # a chunk of the surface torn out, showing the backing
    k = int(rng.integers(5, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = radius * rng.uniform(0.6, 1.3, k)
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(
        [(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii, strict=True)],
        fill=255,
    )
    mask = (np.asarray(canvas) > 0) & fp
    local = img[mask].mean(axis=0) if mask.any() else img.mean(axis=(0, 1))
    backing = np.full(3, 0.12 if local.mean() > 0.35 else 0.75, np.float32) + rng.normal(
        0, 0.03, 3
    ).astype(np.float32)
    return _blend(img, mask, np.clip(backing, 0, 1), 1.0), mask


def _deformation(
    img: Array, fp: Array, bg: Array | None, rng: np.random.Generator, *, scale: float = 1.0
) -> tuple[Array, Array]:
    size = img.shape[0]
    dist = _inner_distance(fp)
    yy, xx = _grid(size)
    radius = _radius(size, rng, 0.01, 0.04, scale, float(dist.max()))
    if bg is not None:  # a dent: the outline is pushed into the object
        cx, cy = _pick_edge(fp, dist, rng)
        smooth = ndimage.gaussian_filter(fp.astype(np.float32), 2.0)
        gy, gx = np.gradient(smooth)
        normal = -np.array([gx[int(cy), int(cx)], gy[int(cy), int(cx)]])
        normal = normal / (np.linalg.norm(normal) + 1e-8)
        fall = np.exp(-2 * ((xx - cx) ** 2 + (yy - cy) ** 2) / radius**2)
        strength = rng.uniform(0.5, 0.9) * radius
        sx, sy = xx + strength * fall * normal[0], yy + strength * fall * normal[1]
    else:  # a local swirl of the surface pattern
        cx, cy = _pick(dist, rng, radius)
        fall = np.exp(-2 * ((xx - cx) ** 2 + (yy - cy) ** 2) / radius**2)
        twist = rng.choice([-1, 1]) * rng.uniform(0.6, 1.0) * fall
        sx, sy = xx - twist * (yy - cy), yy + twist * (xx - cx)
    warped = np.stack(
        [ndimage.map_coordinates(img[..., c], [sy, sx], order=1, mode="nearest") for c in range(3)],
        axis=-1,
    )
    near = np.hypot(xx - cx, yy - cy) <= radius
    mask = (np.abs(warped - img).max(axis=-1) > 0.06) & fp & near
    return np.where(mask[..., None], warped, img).astype(np.float32), mask


def _discoloration(
    img: Array, fp: Array, bg: Array | None, rng: np.random.Generator, *, scale: float = 1.0
) -> tuple[Array, Array]:
    size = img.shape[0]
    dist = _inner_distance(fp)
    radius = _radius(size, rng, 0.012, 0.05, scale, float(dist.max()))
    cx, cy = _pick(dist, rng, radius * 0.7)
    alpha = _soft_blob(size, rng, cx, cy, radius) * rng.uniform(0.75, 1.0)
    mask = (alpha > 0.25) & fp
    shift = rng.normal(0, 1, 3)
    # Hue shift.
    shift = (
        (shift - shift.mean())
        / (np.linalg.norm(shift - shift.mean()) + 1e-8)
        * rng.uniform(0.3, 0.45)
    )
    shift += rng.choice([-1, 1]) * rng.uniform(0.0, 0.1)  # and a little lighter or darker
    recoloured = np.clip(img + shift.astype(np.float32), 0, 1)
    return _blend(img, mask, recoloured, alpha), mask


_DEFECTS: dict[str, DefectFn] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "contamination": _contamination,
    "missing_part": _missing_part,
    "deformation": _deformation,
    "discoloration": _discoloration,
}
AVAILABLE_DEFECTS: tuple[str, ...] = tuple(_DEFECTS)


# ----------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0  # everything is a pure function of this seed
    image_size: int = 128  # square images, in pixels
    classes: tuple[str, ...] = AVAILABLE_CLASSES  # object/texture classes to generate
    defect_types: tuple[str, ...] = AVAILABLE_DEFECTS  # pool of defects the classes draw from
    defects_per_class: int = (
        3  # each class gets this many of defect_types (chosen per class, seeded)
    )
    n_train_good: int = 20  # normal training images per class
    n_test_good: int = 10  # normal test images per class
    n_test_defect: int = 4  # test images per class and per defect type
    # Multiplies every defect's area (radii, lengths, stroke widths, cluster spread by sqrt), in (0, 16].
    defect_scale: float = 1.0
    # Multiplies every defect's intensity change relative to the normal image, in (0, 3].
    defect_contrast: float = 1.0

    def __post_init__(self) -> None:
        for name in ("classes", "defect_types"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(
                    f"SyntheticConfig.{name} must be a list of names, got the string {value!r}"
                )
            object.__setattr__(self, name, tuple(value))
        for name, valid in (("classes", AVAILABLE_CLASSES), ("defect_types", AVAILABLE_DEFECTS)):
            value = getattr(self, name)
            unknown = [v for v in value if v not in valid]
            if unknown:
                raise ValueError(
                    f"SyntheticConfig.{name}: unknown names {unknown}; valid names: {list(valid)}"
                )
            if not value or len(set(value)) != len(value):
                raise ValueError(
                    f"SyntheticConfig.{name} must be non-empty and without repeats, got {list(value)}"
                )
        for name in ("defects_per_class", "n_train_good", "n_test_good", "n_test_defect"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(
                    f"SyntheticConfig.{name} must be positive, got {getattr(self, name)}"
                )
        for name, hi in (("defect_scale", 16.0), ("defect_contrast", 3.0)):
            value = getattr(self, name)
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(value, bool) or not 0.0 < number <= hi:
                raise ValueError(
                    f"SyntheticConfig.{name} must be a number in (0, {hi:g}], got {value!r}"
                )
            object.__setattr__(self, name, number)
        if self.image_size < 32:
            raise ValueError(f"SyntheticConfig.image_size must be >= 32, got {self.image_size}")
        if self.defects_per_class > len(self.defect_types):
            raise ValueError(
                f"SyntheticConfig.defects_per_class ({self.defects_per_class}) exceeds the number of "
                f"defect_types ({len(self.defect_types)})"
            )


# ----------------------------------------------------------------------------------------------- generation
def _key(*parts: int | str) -> np.random.SeedSequence:
    """A seed sequence from ints and strings (strings hashed with CRC-32: stable across runs and platforms)."""
    return np.random.SeedSequence(
        [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    )


def class_defects(config: SyntheticConfig, cls: str) -> tuple[str, ...]:
    """The defect types of one class, in the order of ``config.defect_types`` (seeded by seed and class)."""
    rng = np.random.default_rng(_key(config.seed, cls, "defects"))
    chosen = rng.choice(len(config.defect_types), size=config.defects_per_class, replace=False)
    return tuple(config.defect_types[i] for i in sorted(chosen))


def _finish(img: Array, rng: np.random.Generator) -> Array:
    """The camera: a lighting gradient, exposure, sensor noise; then to uint8. Pointwise, so defects stay in their mask."""
    size = img.shape[0]
    yy, xx = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    gain = 1 + rng.uniform(0, 0.12) * (
        (xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle)
    ) / (size / 2)
    out = img * (gain * rng.uniform(0.92, 1.08))[..., None] + rng.normal(
        0, rng.uniform(0.004, 0.015), img.shape
    )
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def _render(
    config: SyntheticConfig,
    cls: str,
    split: str,
    defect: str | None,
    index: int,
    *,
    apply_defect: bool = True,
) -> tuple[Array, Array | None]:
    """One image (H, W, 3) uint8 and, for a defect, its mask (H, W) uint8 0/255."""
    appearance, damage, camera = _key(config.seed, cls, split, defect or "good", index).spawn(3)
    _, renderer = _CLASSES[cls]
    # Same draws for every image of the class.
    class_rng = np.random.default_rng(_key(config.seed, cls, "class"))
    img, footprint, background = renderer(
        config.image_size, class_rng, np.random.default_rng(appearance)
    )
    mask = None
    if defect is not None:
        rng = np.random.default_rng(damage)
        min_pixels = max(8, int(0.002 * config.image_size**2))
        for _ in range(50):
            damaged, mask = _DEFECTS[defect](
                img, footprint, background, rng, scale=config.defect_scale
            )
            if int(mask.sum()) >= min_pixels:
                break
        else:
            raise RuntimeError(
                f"could not place a {defect!r} defect of >= {min_pixels} px on {cls}/{split}/{index}"
            )
        if apply_defect:
            img = _apply_contrast(img, damaged, mask, config.defect_contrast)
        mask = mask.astype(np.uint8) * 255
    return _finish(img, np.random.default_rng(camera)), mask


def generate_synthetic(config: SyntheticConfig, *, progress: bool = True) -> dict[str, np.ndarray]:
    """Relative posix path -> uint8 array, in the MVTec AD layout.

    Images are (H, W, 3) RGB, masks (H, W) with values 0/255:
    ``<cls>/train/good/000.png``, ``<cls>/test/good/000.png``, ``<cls>/test/<defect>/000.png`` and
    ``<cls>/ground_truth/<defect>/000_mask.png``.
    """
    jobs: list[tuple[str, str, str | None, int]] = []
    for cls in config.classes:
        jobs += [(cls, "train", None, i) for i in range(config.n_train_good)]
        jobs += [(cls, "test", None, i) for i in range(config.n_test_good)]
        for defect in class_defects(config, cls):
            jobs += [(cls, "test", defect, i) for i in range(config.n_test_defect)]
    digits = max(
        3, len(str(max(config.n_train_good, config.n_test_good, config.n_test_defect) - 1))
    )
    out: dict[str, np.ndarray] = {}
    for cls, split, defect, index in tqdm(jobs, desc="synthetic images", disable=not progress):
        image, mask = _render(config, cls, split, defect, index)
        stem = f"{index:0{digits}d}"
        out[f"{cls}/{split}/{defect or 'good'}/{stem}.png"] = image
        if mask is not None:
            out[f"{cls}/ground_truth/{defect}/{stem}_mask.png"] = mask
    logger.info(
        "generated %d synthetic images for %d classes (seed %d)",
        len(jobs),
        len(config.classes),
        config.seed,
    )
    return out


# ----------------------------------------------------------------------------------------------- writing
def _write_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")


def write_tree(images: dict[str, np.ndarray], root: str | os.PathLike[str]) -> None:
    """Write ``images`` (relative posix path -> uint8 array) as PNGs under ``root``, atomically.

    The tree is written into a temporary directory next to ``root`` and then swapped in; an existing
    ``root`` is removed only after the new tree is complete. On any error ``root`` is untouched and
    the temporary directory is removed.
    """
    root = Path(root)
    with atomic_directory(root) as tmp:
        for rel, array in images.items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ValueError(f"write_tree: path {rel!r} escapes the dataset root")
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_png(array, target)
    logger.info("wrote %d files under %s", len(images), root)
