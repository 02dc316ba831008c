"""Reader for the generic "folder" format (MIAD, PKU-Market-Phone, any layout not yet verified).

Layout::

    <root>/<category>/good/*.<ext>                                normal images
    <root>/<category>/<defect>/*.<ext>                            anomalous images
    <root>/ground_truth/<category>/<defect>/<stem>_mask.<ext>     their masks (or <stem>.<ext>)

``ground_truth`` is reserved: it is never a category. An image's mask is looked up only in the
folder that mirrors its own defect folder, first as ``<stem>_mask.*`` then as ``<stem>.*`` (any image
extension, case-insensitive), so stems may repeat across defect folders. A mask whose stem (less a
trailing ``_mask``) names no image in the mirrored folder is an error, as is a mask folder whose
defect folder does not exist (``mask_without_image``). The format has no split of its own: every row gets ``split``
("test" unless told otherwise).
"""

from __future__ import annotations

import os

from vmad_pipeline.datasets.files import (
    add_images,
    check_masks_paired,
    check_split,
    list_images,
    require_root,
    subdirs,
)
from vmad_pipeline.datasets.listing import Listing
from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.datasets.mvtec import MASK_FOLDER, NORMAL_FOLDER


def list_folder(
    root: str | os.PathLike[str], *, source: str = "folder", split: str = "test"
) -> Listing:
    """The items of a generic folder tree (layout in the module docstring)."""
    root = require_root(root)
    check_split(split, root)
    listing = Listing(source, root)
    gt_root = root / MASK_FOLDER
    for gt_cat in subdirs(gt_root):
        for gt_dir in subdirs(gt_cat):
            check_masks_paired(listing, list_images(gt_dir), root / gt_cat.name / gt_dir.name)
    for cat in subdirs(root):
        if cat.name == MASK_FOLDER:
            continue
        for folder in subdirs(cat):
            add_images(
                listing,
                cat.name,
                split,
                list_images(folder),
                defect="" if folder.name == NORMAL_FOLDER else folder.name,
                gt_dir=gt_root / cat.name / folder.name,
            )
    if not listing.items:
        raise IngestError(f"no images in <category>/{{good,<defect>}}/ folders under {root}")
    return listing
