"""Defects: each draws one flaw on a normal image and returns the damaged image and its exact mask.

A defect only changes pixels inside its mask, and the mask lies inside the class's footprint.
``scale`` multiplies a defect's area (lengths by ``sqrt(scale)``) after the random draws, so the
draws are the same at every scale.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from vmad_pipeline.datasets.synthetic.draw import Array, grid, rotate, tint, value_noise


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
    yy, xx = grid(size)
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


def apply_contrast(img: Array, damaged: Array, mask: Array, contrast: float) -> Array:
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
    yy, xx = grid(size)
    u, v = rotate(xx, yy, cx, cy, rng.uniform(0, np.pi))
    aspect = rng.uniform(0.6, 1.6)
    d = np.hypot(u / (radius * np.sqrt(aspect)), v * np.sqrt(aspect) / radius)
    d = d + 0.5 * (value_noise(rng, size, 6, 2) - 0.5)
    return np.clip((1.15 - d) / 0.45, 0, 1).astype(np.float32)


def _blob_patch(
    fp: Array,
    rng: np.random.Generator,
    area: tuple[float, float],
    strength: tuple[float, float],
    scale: float,
) -> tuple[Array, Array]:
    """(alpha, mask) of a soft blob inside the footprint, the recipe of stains and discolorations.

    Its random draws, in order: the radius (covering a fraction in ``area`` of the image), the
    centre, the blob's shape, its peak opacity (in ``strength``)."""
    size = fp.shape[0]
    dist = _inner_distance(fp)
    radius = _radius(size, rng, *area, scale, float(dist.max()))
    cx, cy = _pick(dist, rng, radius * 0.7)
    alpha = _soft_blob(size, rng, cx, cy, radius) * rng.uniform(*strength)
    return alpha, (alpha > 0.25) & fp


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
    yy, xx = grid(size)
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
    alpha, mask = _blob_patch(fp, rng, (0.005, 0.04), (0.7, 0.95), scale)
    local = img[mask].mean(axis=0) if mask.any() else img.mean(axis=(0, 1))
    tints = [(0.55, 0.4, 0.25), (0.35, 0.35, 0.38), (1.25, 1.1, 0.5), (0.8, 0.45, 0.25)]
    colour = np.clip(local * tint(rng, tints[int(rng.integers(len(tints)))], 0.05), 0, 1)
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
    yy, xx = grid(size)
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
    yy, xx = grid(size)
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
    alpha, mask = _blob_patch(fp, rng, (0.012, 0.05), (0.75, 1.0), scale)
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


# defect name -> its function, in the order of configs.ingest.SYNTHETIC_DEFECTS
DEFECTS: dict[str, DefectFn] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "contamination": _contamination,
    "missing_part": _missing_part,
    "deformation": _deformation,
    "discoloration": _discoloration,
}
AVAILABLE_DEFECTS: tuple[str, ...] = tuple(DEFECTS)
