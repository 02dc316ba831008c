"""Reader for VISION (VISION-Datasets, Roboflow COCO exports): polygons rasterised to masks.

Layout::

    <root>/<Category>/train/_annotations.coco.json   (+ the images, beside it)
    <root>/<Category>/val/_annotations.coco.json
    <root>/<Category>/inference/                     (unlabelled: skipped)

Each ``_annotations.coco.json`` is read by the COCO rules of :mod:`vmad_pipeline.datasets.coco`
with the images in its own folder: ``category`` is ``<Category>``, ``split`` is ``train`` for
``train/`` and ``test`` for ``val/`` (the manifest's splits are train/test; VISION's ``val`` is its
held-out labelled set), masks are written under the source's mask root as
``<Category>/<split folder>/<stem>.<hash>.png``. A split folder without its JSON is reported.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmad_pipeline.datasets.coco import list_coco_file
from vmad_pipeline.datasets.files import rel, require_root, subdirs
from vmad_pipeline.datasets.listing import Listing
from vmad_pipeline.datasets.manifest import IngestError

ANNOTATIONS = "_annotations.coco.json"
SPLITS = {"train": "train", "val": "test"}  # VISION folder -> manifest split; inference/ skipped


def list_vision(
    root: str | os.PathLike[str],
    *,
    source: str = "vision",
    mask_root: str | os.PathLike[str],
    categories: list[str] | None = None,
) -> Listing:
    """The items of a VISION tree (layout in the module docstring)."""
    root = require_root(root)
    listing = Listing(source, root, Path(mask_root))
    found = [d for d in subdirs(root) if any((d / s).is_dir() for s in SPLITS)]
    if categories is not None:
        unknown = sorted(set(categories) - {d.name for d in found})
        if unknown:
            raise IngestError(
                f"unknown categories {unknown} under {root}; available: {[d.name for d in found]}"
            )
        found = [d for d in found if d.name in set(categories)]
    if not found:
        raise IngestError(
            f"no VISION categories (<Category>/{{train,val}}/{ANNOTATIONS}) under {root}"
        )
    for cat_dir in found:
        for folder, split in SPLITS.items():
            split_dir = cat_dir / folder
            if not split_dir.is_dir():
                continue
            if not (split_dir / ANNOTATIONS).is_file():
                where = rel(split_dir / ANNOTATIONS, root)
                listing.problem("malformed_metadata", where, f"{where} under {root} does not exist")
                continue
            list_coco_file(
                listing, split_dir / ANNOTATIONS, split_dir, split=split, category=cat_dir.name
            )
    return listing
