"""Object classes (washers, caps, nuts, screws, capsules, cables, boards) on a plain background.

Each renderer takes ``(size, class_rng, image_rng)`` and returns the image, the object's footprint
and the background (defects such as a missing part show it through the object).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from vmad_pipeline.datasets.synthetic.draw import (
    Array,
    Renderer,
    fill_image,
    grid,
    pick_palette,
    rotate,
    tint,
)

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
    return fill_image(size, tint(rng, _BACKGROUNDS[choice], 0.02))


def _object_pose(size: int, rng: np.random.Generator) -> tuple[float, float, float]:
    cx, cy = size / 2 + rng.normal(0.0, 0.04 * size, 2)
    return float(cx), float(cy), float(rng.uniform(0, 2 * np.pi))


def _washer(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    metal_class = pick_palette(crng, _METALS, 0.03)
    metal, bg = tint(rng, metal_class, 0.02), _background(size, crng, rng, metal_class)
    cx, cy, angle = _object_pose(size, rng)
    r_out = size * rng.uniform(0.32, 0.37)
    r_in = r_out * crng.uniform(0.38, 0.48) * rng.uniform(0.97, 1.03)
    yy, xx = grid(size)
    d, theta = np.hypot(xx - cx, yy - cy), np.arctan2(yy - cy, xx - cx)
    ring = (d <= r_out) & (d >= r_in)
    shade = 0.7 + 0.22 * np.cos(theta - angle) + 0.05 * np.sin(d * 2.2)
    img = np.where(ring[..., None], metal * shade[..., None], bg)
    return img.astype(np.float32), ring, bg


def _bottle_cap(
    size: int, crng: np.random.Generator, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    paint_class = pick_palette(crng, [(0.75, 0.1, 0.1), (0.15, 0.35, 0.7), (0.9, 0.75, 0.1)], 0.04)
    paint, bg = tint(rng, paint_class, 0.02), _background(size, crng, rng, paint_class)
    cx, cy, angle = _object_pose(size, rng)
    radius = size * rng.uniform(0.33, 0.38)
    yy, xx = grid(size)
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
    metal_class = pick_palette(crng, _METALS, 0.03)
    metal, bg = tint(rng, metal_class, 0.02), _background(size, crng, rng, metal_class)
    cx, cy, angle = _object_pose(size, rng)
    radius = size * rng.uniform(0.32, 0.37)
    yy, xx = grid(size)
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
    metal_class = pick_palette(crng, _METALS, 0.03)
    metal, bg = tint(rng, metal_class, 0.02), _background(size, crng, rng, metal_class)
    cx, cy, angle = _object_pose(size, rng)
    length, half_w = size * rng.uniform(0.58, 0.66), size * crng.uniform(0.05, 0.065)
    pitch = size * crng.uniform(0.035, 0.05)
    yy, xx = grid(size)
    u, v = rotate(xx, yy, cx, cy, angle)
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
    c0_class = pick_palette(crng, [(0.9, 0.9, 0.88), (0.85, 0.3, 0.2), (0.3, 0.5, 0.8)], 0.03)
    c1_class = pick_palette(crng, [(0.95, 0.8, 0.2), (0.2, 0.6, 0.35), (0.9, 0.9, 0.9)], 0.03)
    c0, c1 = tint(rng, c0_class, 0.015), tint(rng, c1_class, 0.015)
    bg = _background(size, crng, rng, (c0_class + c1_class) / 2)
    cx, cy, angle = _object_pose(size, rng)
    half_len, radius = size * rng.uniform(0.22, 0.26), size * crng.uniform(0.12, 0.15)
    yy, xx = grid(size)
    u, v = rotate(xx, yy, cx, cy, angle)
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
    jacket_class = pick_palette(
        crng, [(0.15, 0.15, 0.15), (0.2, 0.35, 0.75), (0.85, 0.5, 0.1)], 0.03
    )
    jacket, bg = tint(rng, jacket_class, 0.02), _background(size, crng, rng, jacket_class)
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
    board_class = pick_palette(crng, [(0.1, 0.45, 0.2), (0.1, 0.25, 0.5), (0.1, 0.1, 0.1)], 0.03)
    board = tint(rng, board_class, 0.015)
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


# class name -> (family, renderer), in the order of configs.ingest.SYNTHETIC_CLASSES
OBJECTS: dict[str, tuple[str, Renderer]] = {
    "washer": ("round", _washer),
    "bottle_cap": ("round", _bottle_cap),
    "hex_nut": ("polygon", _hex_nut),
    "screw": ("elongated", _screw),
    "capsule": ("elongated", _capsule),
    "cable": ("elongated", _cable),
    "pcb": ("board", _pcb),
}
