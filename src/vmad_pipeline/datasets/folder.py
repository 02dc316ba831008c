"""Reader for the generic "folder" format (MIAD, PKU-Market-Phone, any layout not yet verified), and
the folder helpers that the other readers (BTAD, VisA, Real-IAD, MVTec 3D-AD) share; the row
builder they all use, ``image_row``, is the MVTec reader's (``datasets/mvtec.py``).

Layout::

    <root>/<category>/good/*.<ext>                                normal images
    <root>/<category>/<defect>/*.<ext>                            anomalous images
    <root>/ground_truth/<category>/<defect>/<stem>_mask.<ext>     their masks (or <stem>.<ext>)

``ground_truth`` is reserved: it is never a category. An image's mask is looked up only in the
folder that mirrors its own defect folder, first as ``<stem>_mask.*`` then as ``<stem>.*`` (any image
extension, case-insensitive), so stems may repeat across defect folders. A mask whose stem (less a
trailing ``_mask``) names no image in the mirrored folder is an error, as is a mask folder whose
defect folder does not exist. The format has no split of its own: every row gets ``split``
("test" unless told otherwise).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from vmad_pipeline.datasets.manifest import IngestError, coerce_manifest
from vmad_pipeline.datasets.mvtec import (
    MASK_FOLDER,
    NORMAL_FOLDER,
    _find_mask,
    _is_image,
    _subdirs,
    image_row,
    rel,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")


def require_root(root: str | os.PathLike[str]) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"dataset root {root} does not exist or is not a directory")
    return root


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; [] if it does not exist."""
    return [p for p in sorted(folder.iterdir()) if _is_image(p)] if folder.is_dir() else []


def check_masks_paired(root: Path, masks: Iterable[Path], image_dir: Path) -> None:
    """Raise IngestError for a mask whose stem (less ``_mask``) names no image in ``image_dir``."""
    stems = {p.stem for p in list_images(image_dir)}
    for mask in masks:
        if mask.stem.removesuffix("_mask") not in stems:
            raise IngestError(
                f"mask {rel(mask, root)} under {root} has no image: expected "
                f"{rel(image_dir, root)}/{mask.stem.removesuffix('_mask')}.<ext>"
            )


def finish_manifest(rows: list[Mapping[str, object]], root: Path, source: str) -> pd.DataFrame:
    """The manifest of ``rows``, sorted by category, split and image path."""
    manifest = coerce_manifest(rows).sort_values(["category", "split", "image_path"], kind="stable")
    manifest = manifest.reset_index(drop=True)
    logger.info(
        "read %d %s images (%d anomalous) in %d categories from %s",
        len(manifest),
        source,
        int(manifest["label"].sum()),
        manifest["category"].nunique(),
        root,
    )
    return manifest


def read_folder(
    root: str | os.PathLike[str],
    *,
    source: str = "folder",
    split: str = "test",
    progress: bool = True,
) -> pd.DataFrame:
    """The manifest of a generic folder tree (layout in the module docstring)."""
    root = require_root(root)
    if split not in SPLITS:
        raise IngestError(f"split must be one of {SPLITS}, got {split!r} (reading {root})")
    gt_root = root / MASK_FOLDER
    for gt_cat in _subdirs(gt_root) if gt_root.is_dir() else []:
        for gt_dir in _subdirs(gt_cat):
            check_masks_paired(root, list_images(gt_dir), root / gt_cat.name / gt_dir.name)
    items = [
        (cat.name, folder.name, image)
        for cat in _subdirs(root)
        if cat.name != MASK_FOLDER
        for folder in _subdirs(cat)
        for image in list_images(folder)
    ]
    if not items:
        raise IngestError(f"no images in <category>/{{good,<defect>}}/ folders under {root}")
    rows = []
    for cat, folder, image in tqdm(items, desc=f"reading {source}", disable=not progress):
        mask = None
        if folder != NORMAL_FOLDER:
            gt_dir = gt_root / cat / folder
            mask = _find_mask(gt_dir, image.stem) or gt_dir / f"{image.stem}_mask.png"
        rows.append(
            image_row(
                root,
                image,
                source=source,
                category=cat,
                split=split,
                mask=mask,
                defect_name="" if mask is None else folder,
            )
        )
    return finish_manifest(rows, root, source)
