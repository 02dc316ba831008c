"""Masks as arrays: the bounding box rule, COCO's uncompressed RLE, and polygon rasterisation.

The one place for each of these rules: readers use them to build manifest rows, the COCO writer
of :mod:`vmad_pipeline.annotation` to encode masks. A mask pixel is positive iff its raw value is
> 0 on any channel but alpha, whatever the bit depth (``images.mask_positive``): masks are
read raw on purpose (``images.read_mask_values``), never through PIL's ``convert``, which would
turn a faint colour (blue 3 -> grey 0) or a float below 0.5 into background.

The RLE codec is written here on purpose: pycocotools is not a dependency. The format is COCO's
uncompressed RLE: runs over the mask in column-major (Fortran) order, alternating 0s and 1s and
starting with the count of zeros (0 when the first pixel is positive).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from vmad_pipeline.images import mask_positive

if TYPE_CHECKING:
    from vmad_pipeline.datasets.listing import Shapes

__all__ = ["mask_bbox", "mask_to_rle", "rle_to_mask", "rasterise"]


def mask_bbox(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of the positive pixels (``images.mask_positive``; the first two axes are H,
    W); [] if none."""
    positive_pixels = mask_positive(mask)
    rows = np.flatnonzero(positive_pixels.any(axis=1))
    cols = np.flatnonzero(positive_pixels.any(axis=0))
    if rows.size == 0:
        return []
    y0, y1 = int(rows[0]), int(rows[-1])
    x0, x1 = int(cols[0]), int(cols[-1])
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def mask_to_rle(mask: np.ndarray) -> dict:
    """Binary (> 0) 2-D mask -> ``{"counts": [int, ...], "size": [h, w]}`` (uncompressed COCO RLE)."""
    m = np.asarray(mask) > 0
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    flat = m.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1  # indices where the value flips
    bounds = np.r_[0, change, flat.size]
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"counts": [int(c) for c in counts], "size": [int(m.shape[0]), int(m.shape[1])]}


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`: a uint8 0/1 mask of shape ``size``."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected h*w = {h * w}")
    values = np.arange(counts.size) % 2  # 0, 1, 0, 1, ...
    flat = np.repeat(values.astype(np.uint8), counts)
    return flat.reshape((h, w), order="F")


def rasterise(shapes: Shapes) -> np.ndarray:
    """The polygons (and RLEs) filled with 255 on a 0 background, (H, W) uint8.

    PIL's polygon fill is used (no pycocotools here): a pixel is set when its centre-sampled
    integer position lies inside or on the polygon's outline, so the polygon
    [2,1, 5,1, 5,3, 2,3] sets columns 2..5 of rows 1..3 (edges included).
    """
    canvas = Image.new("L", (shapes.width, shapes.height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in shapes.polygons:
        points = list(zip(polygon[0::2], polygon[1::2], strict=True))
        if len(points) >= 3:
            draw.polygon(points, fill=255, outline=255)
        elif points:  # a segment still marks its pixels (a single point marks none)
            draw.line(points, fill=255)
    array = np.array(canvas)
    size = [shapes.height, shapes.width]
    for counts in shapes.rles:
        array[rle_to_mask({"counts": list(counts), "size": size}) > 0] = 255
    return array
