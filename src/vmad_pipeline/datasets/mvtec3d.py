"""Reader for MVTec 3D-AD, RGB images only.

Layout::

    <root>/<cls>/{train,validation,test}/<label>/rgb/<stem>.png
    <root>/<cls>/{train,validation,test}/<label>/gt/<stem>.png    (mask, same stem)
    <root>/<cls>/{train,validation,test}/<label>/xyz/<stem>.tiff  (ignored)

``good`` is normal (its all-zero ``gt`` masks are ignored); any other label is a defect name whose
images need a ``gt/<stem>.png`` of their size, and a ``gt`` mask whose stem names no ``rgb`` image of
its label is an error. The source's ``validation`` split counts as "train".
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
from vmad_pipeline.datasets.mvtec import NORMAL_FOLDER, _find_mask, _subdirs

# source split -> manifest split
SPLITS = {"train": "train", "validation": "train", "test": "test"}


def read_mvtec3d(
    root: str | os.PathLike[str], *, source: str = "mvtec3d", progress: bool = True
) -> pd.DataFrame:
    """The manifest of an MVTec 3D-AD tree (layout in the module docstring)."""
    root = require_root(root)
    items = []
    for cls_dir in _subdirs(root):
        for source_split, split in SPLITS.items():
            split_dir = cls_dir / source_split
            for label_dir in _subdirs(split_dir) if split_dir.is_dir() else []:
                if label_dir.name != NORMAL_FOLDER:
                    masks = list_images(label_dir / "gt")
                    check_masks_paired(root, masks, label_dir / "rgb")
                images = list_images(label_dir / "rgb")
                items += [(cls_dir.name, split, label_dir, image) for image in images]
    if not items:
        raise IngestError(f"no MVTec 3D-AD classes (<cls>/<split>/<label>/rgb/) under {root}")
    rows = []
    for cls, split, label_dir, image in tqdm(items, desc=f"reading {source}", disable=not progress):
        mask = None
        if label_dir.name != NORMAL_FOLDER:
            mask = (
                _find_mask(label_dir / "gt", image.stem) or label_dir / "gt" / f"{image.stem}.png"
            )
        rows.append(
            image_row(
                root,
                image,
                source=source,
                category=cls,
                split=split,
                mask=mask,
                defect_name="" if mask is None else label_dir.name,
            )
        )
    return finish_manifest(rows, root, source)
