"""RIAD assembly: manifest -> COCO instances (semantic masks, defect ids) and template QA records."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from vmad_pipeline.annotation.coco import build_coco
from vmad_pipeline.annotation.geometry import mask_geometry
from vmad_pipeline.annotation.taxonomy import DefectType, Taxonomy
from vmad_pipeline.annotation.templates import template_qa
from vmad_pipeline.datasets.manifest import mask_file

__all__ = ["assemble_riad", "UNKNOWN_DEFECT"]

logger = logging.getLogger(__name__)

# Stand-in type for anomalous rows whose source defect maps to no taxonomy type (defect_id -1).
UNKNOWN_DEFECT = DefectType(id=-1, name="anomaly", synonyms=())

_REQUIRED = (
    "source",
    "category",
    "image_path",
    "mask_path",
    "label",
    "defect_id",
    "width",
    "height",
    "sha256",
)


def _image_seed(seed: int, sha256: str, position: int) -> int:
    """Stable per-image seed from the run seed and the image content hash (row position if no hash)."""
    key = f"{seed}:{sha256 or position}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def _read_mask(path: Path, width: int, height: int) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"mask file not found: {path}")
    with Image.open(path) as im:
        mask = np.asarray(im.convert("L")) > 0
    if mask.shape != (height, width):
        raise ValueError(
            f"mask {path} has size {mask.shape[1]}x{mask.shape[0]}, manifest says {width}x{height}"
        )
    return mask


def assemble_riad(
    manifest: pd.DataFrame,
    roots: Mapping[str, str],
    taxonomy: Taxonomy,
    *,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """Build the RIAD COCO dict and the QA records from a manifest.

    ``image_id`` is the row position in ``manifest``; ``file_name`` is ``<source>/<image_path>``.
    COCO ``images`` has every row; ``annotations`` one per anomalous row with ``defect_id`` >= 0.
    QA: one record per anomalous row (label 1), with the template backend's description, impact
    and suggestion; rows with ``defect_id`` -1 are described as an unknown "anomaly" and get no
    COCO annotation (warned). Masks are read with PIL, positive = > 0, paths relative to
    ``roots[source]``. A missing mask file raises ValueError naming it.
    """
    missing = [c for c in _REQUIRED if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    unknown_sources = sorted(set(manifest["source"]) - set(roots))
    if unknown_sources:
        raise ValueError(f"no root given for sources {unknown_sources}; roots has {sorted(roots)}")
    has_type = "defect_type" in manifest.columns
    records: list[dict] = []
    qa: list[dict] = []
    n_unknown = 0
    rows = manifest.reset_index(drop=True).to_dict("records")
    for image_id, row in enumerate(
        tqdm(rows, desc="assemble RIAD", unit="img", disable=not progress)
    ):
        width, height = int(row["width"]), int(row["height"])
        source = str(row["source"])
        record = {
            "image_id": image_id,
            "file_name": f"{source}/{row['image_path']}",
            "width": width,
            "height": height,
            "category": str(row["category"]),
            "defect_id": int(row["defect_id"]),
            "mask": None,
        }
        records.append(record)
        if int(row["label"]) != 1:
            continue
        if not str(row["mask_path"]):
            raise ValueError(
                f"anomalous image {record['file_name']} (row {image_id}) has no mask_path"
            )
        mask = _read_mask(mask_file(roots, source, str(row["mask_path"])), width, height)
        geometry = mask_geometry(mask)
        if geometry["n_regions"] == 0:
            logger.warning(
                "anomalous image %s has an empty mask; described at the image centre",
                record["file_name"],
            )
        defect_id = int(row["defect_id"])
        if defect_id >= 0:
            defect = taxonomy.by_id(defect_id)
            record["mask"] = mask
        else:
            defect = UNKNOWN_DEFECT
            n_unknown += 1
            logger.warning(
                "anomalous image %s has no taxonomy defect id; QA says 'anomaly', no COCO annotation",
                record["file_name"],
            )
        defect_type = (
            str(row["defect_type"]) if has_type and str(row["defect_type"]) else defect.name
        )
        answers = template_qa(
            category=str(row["category"]),
            defect=defect,
            geometry=geometry,
            seed=_image_seed(seed, str(row["sha256"]), image_id),
        )
        qa.append(
            {
                "image_id": image_id,
                "source": source,
                "category": str(row["category"]),
                "image_path": str(row["image_path"]),
                "defect_id": defect_id,
                "defect_type": defect_type,
                "location": geometry["location"],
                "size": geometry["size"],
                **answers,
            }
        )
    coco = build_coco(records, taxonomy)
    logger.info(
        "RIAD: %d images, %d annotations, %d QA records (%d with unknown defect type)",
        len(coco["images"]),
        len(coco["annotations"]),
        len(qa),
        n_unknown,
    )
    return coco, qa
