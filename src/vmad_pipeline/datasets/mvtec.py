"""Reader for the MVTec AD layout, and for the datasets that share it (MPDD, WFDD, MAD-Sim, BTAD,
the converted VisA tree and the synthetic dataset), through the format registry.

Layout::

    <root>/<cls>/train/good/*.png
    <root>/<cls>/test/{good,<defect>}/*.png
    <root>/<cls>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png, as in MPDD / WFDD)

Masks are 0/255; any value > 0 is anomalous. A folder named ``good`` (``normal_folder``) holds
normal images, any other folder anomalous ones, which need a mask of the image's size, looked up
by stem only in the mirrored ``ground_truth/<defect>/`` folder. A mask there whose stem names no
image of ``test/<defect>/`` is reported (``mask_without_image``). Other files (MAD-Sim's
``transforms.json``, readmes) are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from vmad_pipeline.datasets.files import (
    SPLITS,
    add_images,
    check_masks_paired,
    list_images,
    require_root,
    subdirs,
)
from vmad_pipeline.datasets.listing import Listing
from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.datasets.scan import read_listing

NORMAL_FOLDER = "good"
MASK_FOLDER = "ground_truth"


def find_classes(root: Path) -> list[str]:
    """Class folders: subfolders of ``root`` that have a ``train/`` or ``test/`` folder."""
    return [p.name for p in subdirs(root) if any((p / split).is_dir() for split in SPLITS)]


def list_mvtec(
    root: str | os.PathLike[str],
    *,
    source: str = "mvtec",
    categories: list[str] | None = None,
    normal_folder: str = NORMAL_FOLDER,
    subdir: str = "",
    mask_name: str = "{stem}_mask.png",
) -> Listing:
    """The items of an MVTec-layout tree (``categories``: only these classes). With ``subdir``
    the classes are under ``root/subdir`` and paths still start at ``root``. A missing mask is
    expected at ``ground_truth/<defect>/<mask_name>``."""
    root = require_root(root)
    top = require_root(root / subdir) if subdir else root
    classes = find_classes(top)
    if categories is not None:
        unknown = sorted(set(categories) - set(classes))
        if unknown:
            raise IngestError(f"unknown categories {unknown} under {top}; available: {classes}")
        classes = [c for c in classes if c in set(categories)]
    if not classes:
        raise IngestError(f"no MVTec-layout classes found under {top}")
    listing = Listing(source, root)
    for cls in classes:
        for gt_dir in subdirs(top / cls / MASK_FOLDER):
            check_masks_paired(listing, list_images(gt_dir), top / cls / "test" / gt_dir.name)
        for split in SPLITS:
            for folder in subdirs(top / cls / split):
                add_images(
                    listing,
                    cls,
                    split,
                    list_images(folder),
                    defect="" if folder.name == normal_folder else folder.name,
                    gt_dir=top / cls / MASK_FOLDER / folder.name,
                    mask_name=mask_name,
                )
    return listing


def read_mvtec(
    root: str | os.PathLike[str],
    *,
    source: str = "mvtec",
    categories: list[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The manifest of an MVTec-layout tree, sorted by category, split and image path.

    Raises IngestError for a missing root, a root without classes, an unknown category, and
    (all at once) every unreadable image or mask, missing mask, mask without an image, or mask
    whose size differs from its image's.
    """
    return read_listing(list_mvtec(root, source=source, categories=categories), progress=progress)
