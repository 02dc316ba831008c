"""COCO instances for RIAD: uncompressed RLE masks and the dataset dict.

The RLE codec is written here on purpose: pycocotools is not a dependency. The format is COCO's
uncompressed RLE: runs over the mask in column-major (Fortran) order, alternating 0s and 1s and
starting with the count of zeros (0 when the first pixel is positive).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from vmad_pipeline.annotation.taxonomy import Taxonomy

__all__ = ["mask_to_rle", "rle_to_mask", "build_coco"]

logger = logging.getLogger(__name__)


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


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def build_coco(records: Iterable[Mapping[str, Any]], taxonomy: Taxonomy) -> dict:
    """COCO instances dict: ``images`` for every record, one ``annotation`` per record with a
    non-empty mask and ``defect_id`` >= 0 (the semantic mask as RLE, ``category_id`` = defect id),
    ``categories`` = the taxonomy types (supercategory "defect").

    Record keys: image_id, file_name, width, height, category (object class), defect_id,
    mask (a 2-D array, an RLE dict from :func:`mask_to_rle`, or None). RLE masks are decoded one
    at a time, so a caller can hold thousands of masks compactly.
    """
    images: list[dict] = []
    annotations: list[dict] = []
    for rec in records:
        image_id = int(rec["image_id"])
        width, height = int(rec["width"]), int(rec["height"])
        images.append(
            {
                "id": image_id,
                "file_name": str(rec["file_name"]),
                "width": width,
                "height": height,
                "category": str(rec.get("category", "")),
            }
        )
        mask = rec.get("mask")
        defect_id = int(rec.get("defect_id", -1))
        if mask is None or defect_id < 0:
            continue
        m = (rle_to_mask(mask) if isinstance(mask, Mapping) else np.asarray(mask)) > 0
        if m.shape != (height, width):
            raise ValueError(
                f"image {image_id} ({rec['file_name']}): mask shape {m.shape} != (height, width) {(height, width)}"
            )
        if not m.any():
            logger.warning(
                "image %d (%s): empty mask, no annotation written", image_id, rec["file_name"]
            )
            continue
        taxonomy.by_id(defect_id)  # KeyError for an id outside the taxonomy
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": defect_id,
                "segmentation": mask_to_rle(m),
                "area": int(m.sum()),
                "bbox": _bbox(m),
                "iscrowd": 0,
            }
        )
    categories = [{"id": t.id, "name": t.name, "supercategory": "defect"} for t in taxonomy.types]
    info = {
        "description": "RIAD: semantic defect masks (uncompressed RLE, category_id = defect type id) "
        "and boxes [x, y, w, h]; one annotation per anomalous image",
    }
    return {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
