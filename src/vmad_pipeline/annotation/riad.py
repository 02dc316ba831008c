"""RIAD assembly: manifest -> COCO instances (semantic masks as RLE, boxes, defect ids) and the
QA records (description, impact analysis, suggestion per anomalous image).

The answers come from an *answerer*: a function from the list of :class:`QaItem` (one per
anomalous image: object class, defect type, mask geometry, image file) to one answer dict per
item. :func:`template_answerer` is the deterministic offline default; the LLM backend is
:func:`vmad_pipeline.annotation.llm.llm_answerer`. Normal images get no QA record: their answer
is :func:`~vmad_pipeline.annotation.templates.normal_answer`, written at training time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vmad_pipeline.annotation.coco import build_coco
from vmad_pipeline.annotation.geometry import mask_geometry
from vmad_pipeline.annotation.taxonomy import DefectType, Taxonomy
from vmad_pipeline.annotation.templates import template_qa
from vmad_pipeline.datasets.manifest import image_file, mask_file
from vmad_pipeline.datasets.masks import mask_to_rle
from vmad_pipeline.images import mask_positive, read_mask_values

__all__ = ["assemble_riad", "UNKNOWN_DEFECT", "QaItem", "Answerer", "template_answerer"]

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


@dataclass(frozen=True)
class QaItem:
    """One anomalous image to annotate."""

    image_id: int  # row position in the manifest = COCO image id
    source: str
    image_path: str  # relative to the source root, as in the manifest
    image: Path  # the image file
    category: str  # object class
    defect: DefectType  # taxonomy type (UNKNOWN_DEFECT when unmapped)
    defect_type: str  # the source's own defect name (the taxonomy name when it has none)
    geometry: Mapping[str, Any]  # mask_geometry(mask)
    width: int
    height: int
    sha256: str  # manifest content hash ("" when absent)

    @property
    def file_name(self) -> str:
        """``<source>/<image_path>``: the COCO file name, and how reports name the image."""
        return f"{self.source}/{self.image_path}"


# Answers for every item, in order: {"description", "impact", "suggestion"} each.
Answerer = Callable[[Sequence[QaItem]], list[dict[str, str]]]


def _image_seed(seed: int, sha256: str, position: int) -> int:
    """Stable per-image seed from the run seed and the image content hash (row position if no hash)."""
    key = f"{seed}:{sha256 or position}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def _read_mask(path: Path, width: int, height: int) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"mask file not found: {path}")
    mask = mask_positive(read_mask_values(path))  # raw values > 0: a faint colour is a defect too
    if mask.shape != (height, width):
        raise ValueError(
            f"mask {path} has size {mask.shape[1]}x{mask.shape[0]}, manifest says {width}x{height}"
        )
    return mask


def template_answerer(seed: int = 0) -> Answerer:
    """The template backend: :func:`template_qa` per item, phrasing seeded by ``seed`` and the
    image's content hash (its row position when it has none)."""

    def answer(items: Sequence[QaItem]) -> list[dict[str, str]]:
        return [
            template_qa(
                category=it.category,
                defect=it.defect,
                geometry=it.geometry,
                seed=_image_seed(seed, it.sha256, it.image_id),
            )
            for it in items
        ]

    return answer


def _check_manifest(manifest: pd.DataFrame, roots: Mapping[str, str]) -> None:
    missing = [c for c in _REQUIRED if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}")
    unknown_sources = sorted(set(manifest["source"]) - set(roots))
    if unknown_sources:
        raise ValueError(f"no root given for sources {unknown_sources}; roots has {sorted(roots)}")


def _coco_record(image_id: int, row: Mapping[str, Any]) -> dict:
    """The COCO record of one manifest row (its mask is set later, for anomalous rows)."""
    return {
        "image_id": image_id,
        "file_name": f"{row['source']}/{row['image_path']}",
        "width": int(row["width"]),
        "height": int(row["height"]),
        "category": str(row["category"]),
        "defect_id": int(row["defect_id"]),
        "mask": None,
    }


def _qa_item(
    record: dict, row: Mapping[str, Any], roots: Mapping[str, str], taxonomy: Taxonomy
) -> QaItem:
    """The item to annotate of one anomalous row; its mask, as RLE, goes on ``record`` when the
    defect has a taxonomy type."""
    source, image_id = str(row["source"]), record["image_id"]
    if not str(row["mask_path"]):
        raise ValueError(f"anomalous image {record['file_name']} (row {image_id}) has no mask_path")
    width, height = record["width"], record["height"]
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
        record["mask"] = mask_to_rle(mask)
    else:
        defect = UNKNOWN_DEFECT
        logger.warning(
            "anomalous image %s has no taxonomy defect id; QA says 'anomaly', no COCO annotation",
            record["file_name"],
        )
    own_name = str(row.get("defect_type", ""))
    return QaItem(
        image_id=image_id,
        source=source,
        image_path=str(row["image_path"]),
        image=image_file(roots, source, str(row["image_path"])),
        category=str(row["category"]),
        defect=defect,
        defect_type=own_name or defect.name,
        geometry=geometry,
        width=width,
        height=height,
        sha256=str(row["sha256"]),
    )


def _qa_records(
    items: Sequence[QaItem], answers: Sequence[Mapping[str, str]], annotator: str
) -> list[dict]:
    if len(answers) != len(items):
        raise RuntimeError(f"answerer returned {len(answers)} answers for {len(items)} images")
    return [
        {
            "image_id": it.image_id,
            "source": it.source,
            "category": it.category,
            "image_path": it.image_path,
            "defect_id": it.defect.id if it.defect is not UNKNOWN_DEFECT else -1,
            "defect_type": it.defect_type,
            "location": it.geometry["location"],
            "size": it.geometry["size"],
            **{k: a[k] for k in ("description", "impact", "suggestion")},
            "annotator": annotator,
        }
        for it, a in zip(items, answers, strict=True)
    ]


def assemble_riad(
    manifest: pd.DataFrame,
    roots: Mapping[str, str],
    taxonomy: Taxonomy,
    *,
    seed: int = 0,
    progress: bool = True,
    answerer: Answerer | None = None,
    annotator: str = "template",
) -> tuple[dict, list[dict]]:
    """Build the RIAD COCO dict and the QA records from a manifest.

    ``image_id`` is the row position in ``manifest``; ``file_name`` is ``<source>/<image_path>``.
    COCO ``images`` has every row; ``annotations`` one per anomalous row with ``defect_id`` >= 0
    (its mask as uncompressed RLE, its box, ``category_id`` = defect id).
    QA: one record per anomalous row (label 1) with the description, impact and suggestion of
    ``answerer`` (default: ``template_answerer(seed)``) and ``annotator`` naming it; rows with
    ``defect_id`` -1 are described as an unknown "anomaly" and get no COCO annotation (warned).
    Masks are read raw (positive = raw value > 0 on any channel, ``datasets.masks.positive``),
    located by ``datasets.manifest.mask_file``. A missing mask file raises ValueError naming
    it. Masks are kept as RLE, not as arrays, so memory grows with the defect outlines, not the
    pixel count.
    """
    _check_manifest(manifest, roots)
    records: list[dict] = []
    items: list[QaItem] = []
    rows = manifest.reset_index(drop=True).to_dict("records")
    for image_id, row in enumerate(
        tqdm(rows, desc="assemble RIAD", unit="img", disable=not progress)
    ):
        records.append(_coco_record(image_id, row))
        if int(row["label"]) == 1:
            items.append(_qa_item(records[-1], row, roots, taxonomy))
    qa = _qa_records(items, (answerer or template_answerer(seed))(items), annotator)
    coco = build_coco(records, taxonomy)
    logger.info(
        "RIAD: %d images, %d annotations, %d QA records (%d with unknown defect type)",
        len(coco["images"]),
        len(coco["annotations"]),
        len(qa),
        sum(it.defect is UNKNOWN_DEFECT for it in items),
    )
    return coco, qa
