"""A second MVTec-layout tree for transfer checks: object families, textures and defect shapes
that the embedded generator (``vmad_pipeline.datasets.synthetic``) does not draw.

Families: ``gear`` (toothed wheel), ``resistor`` (banded body with leads), ``tablet`` (rounded
square pill); textures ``marble`` (veined stone), ``perforated_sheet`` (hole grid on metal),
``knit`` (chevron stitches). Defects, named by taxonomy types the generator never makes:
``bubble`` (a bright blister ring), ``cut`` (a straight gap showing what is behind),
``dent`` (a shaded depression), ``foreign_object`` (a curled hair-like fibre), ``fold`` (a
crease band, the pattern shifted across it). Only the drawing primitives are shared.

    write_transfer_tree(root)   # root/<class>/{train/good, test/<defect>, ground_truth/<defect>}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vmad_pipeline.datasets.synthetic.draw import grid, rotate, value_noise

Array = np.ndarray
DEFECTS = {
    "gear": ("bubble", "cut", "foreign_object"),
    "resistor": ("cut", "dent", "foreign_object"),
    "tablet": ("bubble", "dent", "cut"),
    "marble": ("fold", "foreign_object", "bubble"),
    "perforated_sheet": ("dent", "fold", "cut"),
    "knit": ("fold", "bubble", "foreign_object"),
}


def _gear(size: int, rng: np.random.Generator) -> tuple[Array, Array]:
    yy, xx = grid(size)
    cx, cy = size / 2 + rng.uniform(-4, 4, 2)
    r, theta = np.hypot(xx - cx, yy - cy), np.arctan2(yy - cy, xx - cx) + rng.uniform(0, np.pi)
    outer = size * 0.36 + size * 0.04 * (np.cos(12 * theta) > 0)  # 12 square teeth
    body = (r <= outer) & (r >= size * 0.07)
    bg = np.full((size, size, 3), (0.15, 0.17, 0.2), np.float32)
    shade = 0.55 + 0.25 * (r < size * 0.2)  # a raised hub
    img = np.where(body[..., None], np.array([0.8, 0.62, 0.3]) * shade[..., None], bg)
    return img.astype(np.float32), body


def _resistor(size: int, rng: np.random.Generator) -> tuple[Array, Array]:
    yy, xx = grid(size)
    u, v = rotate(xx, yy, size / 2, size / 2, rng.uniform(-0.3, 0.3))
    body = (np.abs(u) < size * 0.3) & (np.abs(v) < size * 0.11)
    lead = (np.abs(u) < size * 0.47) & (np.abs(v) < size * 0.015)
    img = np.full((size, size, 3), (0.1, 0.35, 0.2), np.float32)  # a green board
    img[lead] = (0.75, 0.75, 0.78)
    img[body] = (0.85, 0.75, 0.55)
    colours = [(0.6, 0.2, 0.1), (0.1, 0.1, 0.1), (0.9, 0.5, 0.1), (0.8, 0.7, 0.2)]
    for k, colour in enumerate(colours):
        img[body & (np.abs(u - size * (-0.18 + 0.1 * k)) < size * 0.025)] = colour
    return img, body | lead


def _tablet(size: int, rng: np.random.Generator) -> tuple[Array, Array]:
    yy, xx = grid(size)
    u, v = rotate(xx, yy, size / 2, size / 2, rng.uniform(0, np.pi / 2))
    half, corner = size * 0.28, size * 0.1
    q = np.maximum(np.abs(np.stack([u, v])) - (half - corner), 0)
    body = np.hypot(q[0], q[1]) <= corner  # a rounded square
    img = np.full((size, size, 3), (0.25, 0.3, 0.55), np.float32)
    img[body] = (0.92, 0.9, 0.85)
    img[body & (np.abs(u) < size * 0.012)] = (0.7, 0.68, 0.64)  # the score line
    return img, body


def _marble(size: int, rng: np.random.Generator) -> tuple[Array, None]:
    yy, xx = grid(size)
    veins = np.abs(np.sin((xx + yy) / size * 6 + 6 * value_noise(rng, size, 3, 3)))
    field = 0.75 + 0.2 * veins
    return np.stack([field, field * 0.98, field * 0.95], -1).astype(np.float32), None


def _perforated_sheet(size: int, rng: np.random.Generator) -> tuple[Array, None]:
    yy, xx = grid(size)
    pitch = 12
    ox, oy = rng.uniform(0, pitch, 2)
    d = np.hypot((xx + ox) % pitch - pitch / 2, (yy + oy) % pitch - pitch / 2)
    field = np.where(d < 3.2, 0.1, 0.68 + 0.06 * value_noise(rng, size, 4, 2))
    return np.repeat(field[..., None], 3, -1).astype(np.float32), None


def _knit(size: int, rng: np.random.Generator) -> tuple[Array, None]:
    yy, xx = grid(size)
    phase = rng.uniform(0, 8)
    chevron = np.abs(((xx + phase) % 8) - 4) + (yy % 6)
    field = 0.4 + 0.05 * (chevron % 6)
    return (field[..., None] * np.array([0.5, 0.8, 0.95])).astype(np.float32), None


RENDER = {
    "gear": _gear,
    "resistor": _resistor,
    "tablet": _tablet,
    "marble": _marble,
    "perforated_sheet": _perforated_sheet,
    "knit": _knit,
}


def _centre(
    footprint: Array | None, size: int, rng: np.random.Generator, margin: int
) -> tuple[int, int]:
    """A random pixel of the object (anywhere for a texture), ``margin`` away from the border."""
    ys, xs = np.nonzero(footprint) if footprint is not None else np.mgrid[0:size, 0:size]
    ys, xs = np.ravel(ys), np.ravel(xs)
    keep = (ys >= margin) & (ys < size - margin) & (xs >= margin) & (xs < size - margin)
    i = rng.integers(keep.sum())
    return int(ys[keep][i]), int(xs[keep][i])


def _defect(img: Array, body: Array | None, kind: str, rng: np.random.Generator):
    """The damaged image and its mask (inside the object for objects)."""
    size = img.shape[0]
    yy, xx = grid(size)
    k = size / 128  # defect sizes below are for 128 px images
    cy, cx = _centre(body, size, rng, int(16 * k))
    out = img.copy()
    if kind == "bubble":
        d = np.hypot(xx - cx, yy - cy)
        radius = rng.uniform(6, 9) * k
        mask = d <= radius + 1.5 * k
        ring = np.clip(1 - np.abs(d - radius) / (1.5 * k), 0, 1)
        out = out * (1 - 0.25 * (d < radius))[..., None] + ring[..., None] * 0.7
    elif kind == "cut":
        u, v = rotate(xx, yy, cx, cy, rng.uniform(0, np.pi))
        mask = (np.abs(u) < rng.uniform(14, 20) * k) & (np.abs(v) < 2.0 * k)
        out[mask] = (0.03, 0.03, 0.03)
    elif kind == "dent":
        d = np.hypot(xx - cx, yy - cy)
        radius = rng.uniform(8, 12) * k
        mask = d <= radius
        u, _ = rotate(xx, yy, cx, cy, rng.uniform(0, 2 * np.pi))
        light = np.where(mask, 1 + 0.6 * u / radius, 1.0)  # lit on one side, dark on the other
        out = out * light[..., None]
    elif kind == "foreign_object":
        t = np.linspace(0, 1, 80)
        a = rng.uniform(0, 2 * np.pi)
        px = cx + 21 * k * np.cos(a + 4 * t) * t
        py = cy + 21 * k * np.sin(a + 4 * t) * t
        mask = np.zeros((size, size), bool)
        for x, y in zip(px, py, strict=True):
            mask |= np.hypot(xx - x, yy - y) < 1.6 * k
        out[mask] = (0.1, 0.08, 0.05)
    else:  # fold: a crease band, the pattern shifted by half its width across it
        u, v = rotate(xx, yy, cx, cy, rng.uniform(0, np.pi))
        mask = (np.abs(v) < 5 * k) & (np.abs(u) < 30 * k)
        # lit on one flank, dark in the crease itself
        light = (1 + 0.3 * v / (5 * k)) * (1 - 0.5 * np.exp(-(v**2) / (3 * k * k)))
        shifted = np.roll(out, (3, 3), (0, 1)) * light[..., None]
        out = np.where(mask[..., None], shifted, out)
    if body is not None:
        mask &= body
        out = np.where(body[..., None], out, img)
    return np.clip(out, 0, 1), mask


def _save(array: Array, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _photo(img: Array, rng: np.random.Generator) -> Array:
    noisy = img + rng.normal(0, 0.01, img.shape)
    return np.round(np.clip(noisy, 0, 1) * 255).astype(np.uint8)


def write_transfer_tree(
    root: Path,
    size: int = 128,
    n_good: int = 8,
    n_defect: int = 3,
    seed: int = 0,
    n_train: int = 2,
) -> dict[str, int]:
    """Writes the tree (train/good: ``n_train`` images per class, at least 2; the ones past 2
    drawn last, so the other images are the same whatever ``n_train``); returns the test images
    per class."""
    root = Path(root)
    counts = {}
    for c, (cls, defects) in enumerate(DEFECTS.items()):
        rng = np.random.default_rng([seed, c])
        for i in range(n_good + 2):
            img, _ = RENDER[cls](size, rng)
            part = "train" if i < 2 else "test"
            _save(_photo(img, rng), root / cls / part / "good" / f"{i:03d}.png")
        for defect in defects:
            for i in range(n_defect):
                img, body = RENDER[cls](size, rng)
                damaged, mask = _defect(img, body, defect, rng)
                _save(_photo(damaged, rng), root / cls / "test" / defect / f"{i:03d}.png")
                gt = (mask * 255).astype(np.uint8)
                _save(gt, root / cls / "ground_truth" / defect / f"{i:03d}_mask.png")
        for i in range(2, n_train):  # more normal references (the k-shot evaluation)
            img, _ = RENDER[cls](size, rng)
            _save(_photo(img, rng), root / cls / "train" / "good" / f"t{i:03d}.png")
        counts[cls] = n_good + len(defects) * n_defect
    return counts
