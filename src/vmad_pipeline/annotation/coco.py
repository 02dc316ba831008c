"""COCO instances for RIAD: the dataset dict, one semantic mask (uncompressed RLE) per image.

Masks are encoded with the project's one RLE codec, :mod:`vmad_pipeline.datasets.masks`
(pycocotools is not a dependency).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from vmad_pipeline.annotation.taxonomy import Taxonomy
from vmad_pipeline.datasets.masks import mask_bbox, mask_to_rle, rle_to_mask

__all__ = ["build_coco"]

logger = logging.getLogger(__name__)


def _semantic_mask(
    rec: Mapping[str, Any], image_id: int, width: int, height: int
) -> np.ndarray | None:
    """A record's mask as booleans, checked against its size; None when it gets no annotation
    (no mask, no defect type, or an empty mask: warned)."""
    mask = rec.get("mask")
    if mask is None or int(rec.get("defect_id", -1)) < 0:
        return None
    m = (rle_to_mask(mask) if isinstance(mask, Mapping) else np.asarray(mask)) > 0
    if m.shape != (height, width):
        raise ValueError(
            f"image {image_id} ({rec['file_name']}): mask shape {m.shape} != (height, width) {(height, width)}"
        )
    if not m.any():
        logger.warning(
            "image %d (%s): empty mask, no annotation written", image_id, rec["file_name"]
        )
        return None
    return m


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
        m = _semantic_mask(rec, image_id, width, height)
        if m is None:
            continue
        defect_id = int(rec["defect_id"])
        taxonomy.by_id(defect_id)  # KeyError for an id outside the taxonomy
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": defect_id,
                "segmentation": mask_to_rle(m),
                "area": int(m.sum()),
                "bbox": mask_bbox(m),
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
