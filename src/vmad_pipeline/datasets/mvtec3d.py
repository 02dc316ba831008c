"""Reader for MVTec 3D-AD, RGB images only.

Layout::

    <root>/<cls>/{train,validation,test}/<label>/rgb/<stem>.png
    <root>/<cls>/{train,validation,test}/<label>/gt/<stem>.png    (mask, same stem)
    <root>/<cls>/{train,validation,test}/<label>/xyz/<stem>.tiff  (ignored)

``good`` is normal (its all-zero ``gt`` masks are ignored); any other label is a defect name whose
images need a ``gt/<stem>.png`` of their size, and a ``gt`` mask whose stem names no ``rgb`` image of
its label is reported (``mask_without_image``). The source's ``validation`` split counts as "train".
"""

from __future__ import annotations

import os

from vmad_pipeline.datasets.files import (
    add_images,
    check_masks_paired,
    list_images,
    require_root,
    subdirs,
)
from vmad_pipeline.datasets.listing import Listing
from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.datasets.mvtec import NORMAL_FOLDER

# source split -> manifest split
SPLITS = {"train": "train", "validation": "train", "test": "test"}


def list_mvtec3d(root: str | os.PathLike[str], *, source: str = "mvtec3d") -> Listing:
    """The items of an MVTec 3D-AD tree (layout in the module docstring)."""
    root = require_root(root)
    listing = Listing(source, root)
    for cls_dir in subdirs(root):
        for source_split, split in SPLITS.items():
            for label_dir in subdirs(cls_dir / source_split):
                normal = label_dir.name == NORMAL_FOLDER
                if not normal:
                    check_masks_paired(listing, list_images(label_dir / "gt"), label_dir / "rgb")
                add_images(
                    listing,
                    cls_dir.name,
                    split,
                    list_images(label_dir / "rgb"),
                    defect="" if normal else label_dir.name,
                    gt_dir=label_dir / "gt",
                    mask_name="{stem}.png",
                )
    if not listing.items:
        raise IngestError(f"no MVTec 3D-AD classes (<cls>/<split>/<label>/rgb/) under {root}")
    return listing
