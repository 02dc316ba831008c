"""Mask geometry in words: where a defect is (3x3 grid) and how large it is."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vmad_pipeline.datasets.masks import mask_bbox

__all__ = ["LOCATIONS", "SIZES", "location_phrase", "size_phrase", "mask_geometry"]

# Row-major 3x3 grid of location phrases.
_GRID = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
LOCATIONS: tuple[str, ...] = tuple(p for row in _GRID for p in row)
SIZES: tuple[str, ...] = ("tiny", "small", "medium", "large")

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _cell(v: float, extent: int) -> int:
    return min(2, max(0, int(3 * v / extent))) if extent > 0 else 1


def location_phrase(cy: float, cx: float, height: int, width: int) -> str:
    """Grid cell of the point (cy, cx) in an image of ``height`` x ``width`` (thirds per axis)."""
    return _GRID[_cell(cy, height)][_cell(cx, width)]


def size_phrase(area_fraction: float) -> str:
    """ "tiny" < 0.5 %, "small" < 2 %, "medium" < 8 % of the image, else "large"."""
    if area_fraction < 0.005:
        return "tiny"
    if area_fraction < 0.02:
        return "small"
    if area_fraction < 0.08:
        return "medium"
    return "large"


def mask_geometry(mask: np.ndarray) -> dict:
    """Geometry of the positive (> 0) pixels of a 2-D mask.

    Returns ``centroid`` (cy, cx) in pixels (pixel centres at integer coordinates; the location
    uses cy + 0.5, cx + 0.5 so a pixel falls in the grid cell that contains it), ``bbox`` [x, y, w, h],
    ``area_fraction``, ``location``, ``size`` and ``n_regions`` (8-connected). An empty mask
    gives centroid None, bbox [], area 0, location "" and n_regions 0.
    """
    m = np.asarray(mask) > 0
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    height, width = m.shape
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        return {
            "centroid": None,
            "bbox": [],
            "area_fraction": 0.0,
            "location": "",
            "size": "",
            "n_regions": 0,
        }
    cy, cx = float(ys.mean()), float(xs.mean())
    area_fraction = float(ys.size) / float(m.size)
    _, n_regions = ndimage.label(m, structure=_EIGHT_CONNECTED)
    return {
        "centroid": (cy, cx),
        "bbox": mask_bbox(m),
        "area_fraction": area_fraction,
        "location": location_phrase(cy + 0.5, cx + 0.5, height, width),
        "size": size_phrase(area_fraction),
        "n_regions": int(n_regions),
    }
