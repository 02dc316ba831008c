"""Reader for BTAD (beanTech Anomaly Detection).

Layout::

    <root>/{01,02,03}/train/ok/0000.bmp        (bmp or png)
    <root>/{01,02,03}/test/ok/0000.bmp
    <root>/{01,02,03}/test/ko/0000.bmp
    <root>/{01,02,03}/ground_truth/ko/0000.png (mask; its extension may differ from the image's)

``ok`` is normal, ``ko`` anomalous (``defect_name`` "ko"). The category is the product folder's own
name ("01", "02", "03"). File stems repeat between ``ok`` and ``ko``, so a mask is only ever looked
up in ``ground_truth/<folder>`` for an image in ``test/<folder>``, by stem (``<stem>_mask.*`` first,
then ``<stem>.*``); a mask there whose stem names no image in ``test/<folder>`` is an error.
"""

from __future__ import annotations

import os

import pandas as pd
from tqdm.auto import tqdm

from vmad_pipeline.datasets.folder import (
    check_masks_paired,
    finish_manifest,
    image_row,
    list_images,
    require_root,
)
from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.datasets.mvtec import MASK_FOLDER, SPLITS, _find_mask, _subdirs, find_classes

NORMAL_FOLDER = "ok"


def read_btad(
    root: str | os.PathLike[str], *, source: str = "btad", progress: bool = True
) -> pd.DataFrame:
    """The manifest of a BTAD tree (layout in the module docstring)."""
    root = require_root(root)
    items = []
    for cat in find_classes(root):
        gt_root = root / cat / MASK_FOLDER
        for gt_dir in _subdirs(gt_root) if gt_root.is_dir() else []:
            check_masks_paired(root, list_images(gt_dir), root / cat / "test" / gt_dir.name)
        for split in SPLITS:
            split_dir = root / cat / split
            for folder in _subdirs(split_dir) if split_dir.is_dir() else []:
                items += [(cat, split, folder.name, image) for image in list_images(folder)]
    if not items:
        raise IngestError(f"no BTAD products (<id>/{{train,test}}/{{ok,ko}}/) under {root}")
    rows = []
    for cat, split, folder, image in tqdm(items, desc=f"reading {source}", disable=not progress):
        mask = None
        if folder != NORMAL_FOLDER:
            gt_dir = root / cat / MASK_FOLDER / folder
            mask = _find_mask(gt_dir, image.stem) or gt_dir / f"{image.stem}.png"
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
