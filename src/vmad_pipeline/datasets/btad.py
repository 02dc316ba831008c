"""Reader for BTAD (beanTech Anomaly Detection).

Layout::

    <root>/{01,02,03}/train/ok/0000.bmp        (bmp or png)
    <root>/{01,02,03}/test/ok/0000.bmp
    <root>/{01,02,03}/test/ko/0000.bmp
    <root>/{01,02,03}/ground_truth/ko/0000.png (mask; its extension may differ from the image's)

``ok`` is normal, ``ko`` anomalous (``defect_name`` "ko"). The category is the product folder's own
name ("01", "02", "03"). File stems repeat between ``ok`` and ``ko``, so a mask is only ever looked
up in ``ground_truth/<folder>`` for an image in ``test/<folder>``, by stem (``<stem>_mask.*`` first,
then ``<stem>.*``); a mask there whose stem names no image in ``test/<folder>`` is reported
(``mask_without_image``).
"""

from __future__ import annotations

import os

import pandas as pd

from vmad_pipeline.datasets.files import (
    add_images,
    check_masks_paired,
    list_images,
    require_root,
    subdirs,
)
from vmad_pipeline.datasets.listing import Listing
from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.datasets.mvtec import MASK_FOLDER, SPLITS, find_classes
from vmad_pipeline.datasets.scan import read_listing

NORMAL_FOLDER = "ok"


def list_btad(root: str | os.PathLike[str], *, source: str = "btad") -> Listing:
    """The items of a BTAD tree (layout in the module docstring)."""
    root = require_root(root)
    listing = Listing(source, root)
    for cat in find_classes(root):
        for gt_dir in subdirs(root / cat / MASK_FOLDER):
            check_masks_paired(listing, list_images(gt_dir), root / cat / "test" / gt_dir.name)
        for split in SPLITS:
            for folder in subdirs(root / cat / split):
                add_images(
                    listing,
                    cat,
                    split,
                    list_images(folder),
                    defect="" if folder.name == NORMAL_FOLDER else folder.name,
                    gt_dir=root / cat / MASK_FOLDER / folder.name,
                    mask_name="{stem}.png",
                )
    if not listing.items:
        raise IngestError(f"no BTAD products (<id>/{{train,test}}/{{ok,ko}}/) under {root}")
    return listing


def read_btad(
    root: str | os.PathLike[str], *, source: str = "btad", progress: bool = True
) -> pd.DataFrame:
    """The manifest of a BTAD tree (layout in the module docstring)."""
    return read_listing(list_btad(root, source=source), progress=progress)
