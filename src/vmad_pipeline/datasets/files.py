"""File-tree helpers that every reader shares: what counts as an image, sorted folder listings,
the mask-by-stem rule, relative posix paths. Listing only: nothing here opens an image."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from vmad_pipeline.datasets.listing import Item, Listing
from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.images import IMAGE_SUFFIXES

IMAGE_EXTENSIONS = frozenset(IMAGE_SUFFIXES)  # WebP included: serving and predict read it too
SPLITS = ("train", "test")  # the manifest's split values


def subdirs(path: Path) -> list[Path]:
    """Visible subfolders of ``path``, sorted; [] if ``path`` is not a folder."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; [] if it does not exist.

    ``os.scandir`` gives the file type without a ``stat`` per file: listing 100k files costs
    a directory read, not 100k system calls."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(
                e.name
                for e in entries
                if not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
                and e.is_file()
            )
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / name for name in names]


def mask_index(gt_dir: Path) -> dict[str, Path]:
    """Stem -> mask file of one mask folder (the first by name when stems repeat across
    extensions); list it once per folder, then look up each image with :func:`find_mask`."""
    by_stem: dict[str, Path] = {}
    for path in list_images(gt_dir):
        by_stem.setdefault(path.stem, path)
    return by_stem


def find_mask(index: dict[str, Path], stem: str) -> Path | None:
    """``<stem>_mask.<ext>`` first, then ``<stem>.<ext>`` (any image extension,
    case-insensitive) in a :func:`mask_index`; None if neither exists."""
    return index.get(f"{stem}_mask") or index.get(stem)


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, posix."""
    return path.relative_to(root).as_posix()


def check_split(split: str, root: Path) -> None:
    """IngestError unless ``split`` (a reader option) is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise IngestError(f"split must be one of {SPLITS}, got {split!r} (reading {root})")


def require_root(root: str | os.PathLike[str]) -> Path:
    """``root`` as a Path; IngestError if it is not an existing folder."""
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"dataset root {root} does not exist or is not a directory")
    return root


def check_masks_paired(
    listing: Listing, masks: Iterable[Path], image_dir: Path, *, base: Path | None = None
) -> None:
    """A ``mask_without_image`` problem for each mask whose stem (less ``_mask``) names no image
    in ``image_dir``. Paths are reported relative to ``base`` (default: the listing's root)."""
    base = base or listing.root
    stems = {p.stem for p in list_images(image_dir)}
    for mask in masks:
        stem = mask.stem.removesuffix("_mask")
        if stem not in stems:
            listing.problem(
                "mask_without_image",
                rel(mask, base),
                f"mask {rel(mask, base)} under {base} has no image: expected "
                f"{rel(image_dir, base)}/{stem}.<ext>",
            )


def add_images(
    listing: Listing,
    category: str,
    split: str,
    images: Iterable[Path],
    *,
    defect: str = "",
    gt_dir: Path | None = None,
    mask_name: str = "{stem}_mask.png",
) -> None:
    """Append one folder's images to ``listing``: normal ones (no ``defect``), or anomalous ones
    of type ``defect`` with their masks found in ``gt_dir`` by :func:`find_mask` (a missing mask
    is recorded under ``mask_name`` so the scan names the file it expected)."""
    root = listing.root
    if not defect:
        listing.items += [Item(category, split, rel(image, root)) for image in images]
        return
    masks = mask_index(gt_dir)
    for image in images:
        mask = find_mask(masks, image.stem) or gt_dir / mask_name.format(stem=image.stem)
        listing.items.append(Item(category, split, rel(image, root), rel(mask, root), defect))
