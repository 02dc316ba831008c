"""Reader for the MVTec AD layout (also MPDD, WFDD and the synthetic dataset).

Layout::

    <root>/<cls>/train/good/*.png
    <root>/<cls>/test/{good,<defect>}/*.png
    <root>/<cls>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png, as in MPDD / WFDD)

Masks are 0/255; any value > 0 is anomalous. A folder named ``good`` holds normal images, any other
folder anomalous ones, which must have a mask of the image's size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from vmad_pipeline.datasets.manifest import IngestError, coerce_manifest, file_sha256, mask_bbox

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SPLITS = ("train", "test")
NORMAL_FOLDER = "good"
MASK_FOLDER = "ground_truth"


def _is_image(path: Path) -> bool:
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_classes(root: Path) -> list[str]:
    """Class folders: subfolders of ``root`` that have a ``train/`` or ``test/`` folder."""
    return [p.name for p in _subdirs(root) if any((p / split).is_dir() for split in SPLITS)]


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    """``<stem>_mask.<ext>`` first, then ``<stem>.<ext>``, within one defect folder (extension case-insensitive)."""
    if not gt_dir.is_dir():
        return None
    by_stem: dict[str, Path] = {}
    for path in sorted(gt_dir.iterdir()):
        if _is_image(path):
            by_stem.setdefault(path.stem, path)
    return by_stem.get(f"{stem}_mask") or by_stem.get(stem)


def _decode(path: Path, root: Path, what: str) -> np.ndarray:
    """Fully decode an image (H, W[, C]); a corrupt or unreadable file raises IngestError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image)
    except Exception as error:  # PIL raises many types for bad files
        raise IngestError(
            f"unreadable {what} {path.relative_to(root).as_posix()} under {root}: {error}"
        ) from error


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, posix."""
    return path.relative_to(root).as_posix()


def image_row(
    root: Path,
    image: Path,
    *,
    source: str,
    category: str,
    split: str,
    mask: Path | None = None,
    defect_name: str = "",
    view: str = "",
) -> dict[str, object]:
    """One manifest row; anomalous iff ``mask`` (where the mask is, or should be) is given.

    The image and mask are fully decoded; a missing or unreadable mask, or one whose size differs
    from the image's, raises IngestError naming both files.
    """
    height, width = _decode(image, root, "image").shape[:2]
    row: dict[str, object] = {
        "source": source,
        "category": category,
        "image_path": rel(image, root),
        "split": split,
        "width": width,
        "height": height,
        "view": view,
        "sha256": file_sha256(image),
        "label": 0,
    }
    if mask is None:
        return row
    if not mask.is_file():
        raise IngestError(
            f"anomalous image {rel(image, root)} under {root} has no mask: expected {rel(mask, root)}"
        )
    array = _decode(mask, root, "mask")
    mask_height, mask_width = array.shape[:2]
    if (mask_width, mask_height) != (width, height):
        raise IngestError(
            f"mask {rel(mask, root)} is {mask_width}x{mask_height} but image {rel(image, root)} is "
            f"{width}x{height} (under {root})"
        )
    bbox = mask_bbox(array)
    if not bbox:
        logger.warning("mask %s of anomalous image %s is empty; keeping label 1", mask, image)
    row.update(mask_path=rel(mask, root), label=1, defect_name=defect_name, bbox=bbox)
    return row


def _read_item(root: Path, cls: str, split: str, folder: str, path: Path, source: str) -> dict:
    mask_path = None
    if folder != NORMAL_FOLDER:
        gt_dir = root / cls / MASK_FOLDER / folder
        mask_path = _find_mask(gt_dir, path.stem)
        if mask_path is None:
            expected = rel(gt_dir / f"{path.stem}_mask.png", root)
            raise IngestError(
                f"anomalous image {rel(path, root)} under {root} has no mask: expected {expected} (or {path.stem}.png in that folder)"
            )
    return image_row(
        root,
        path,
        source=source,
        category=cls,
        split=split,
        mask=mask_path,
        defect_name="" if mask_path is None else folder,
    )


def read_mvtec(
    root: str | os.PathLike[str],
    *,
    source: str = "mvtec",
    categories: list[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The manifest of an MVTec-layout tree, sorted by category, split and image path.

    Raises IngestError for a missing root, a root without classes, an unknown category, an unreadable
    image or mask, a missing mask, or a mask whose size differs from its image's.
    """
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"dataset root {root} does not exist or is not a directory")
    classes = find_classes(root)
    if categories is not None:
        unknown = sorted(set(categories) - set(classes))
        if unknown:
            raise IngestError(f"unknown categories {unknown} under {root}; available: {classes}")
        classes = [c for c in classes if c in set(categories)]
    items: list[tuple[str, str, str, Path]] = []
    for cls in classes:
        for split in SPLITS:
            split_dir = root / cls / split
            if not split_dir.is_dir():
                continue
            for folder in _subdirs(split_dir):
                items += [
                    (cls, split, folder.name, p) for p in sorted(folder.iterdir()) if _is_image(p)
                ]
    if not items:
        raise IngestError(f"no MVTec-layout classes found under {root}")
    rows = [
        _read_item(root, cls, split, folder, path, source)
        for cls, split, folder, path in tqdm(items, desc=f"reading {source}", disable=not progress)
    ]
    manifest = coerce_manifest(rows).sort_values(["category", "split", "image_path"], kind="stable")
    manifest = manifest.reset_index(drop=True)
    logger.info(
        "read %d images (%d anomalous) in %d classes from %s",
        len(manifest),
        int(manifest["label"].sum()),
        manifest["category"].nunique(),
        root,
    )
    return manifest
