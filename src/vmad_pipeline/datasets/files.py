"""File-tree helpers that every reader shares: what counts as an image, sorted folder listings,
the mask-by-stem rule, relative posix paths. Listing only: nothing here opens an image."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.datasets.scan import Listing

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def is_image(path: Path) -> bool:
    """A visible file with an image extension (case-insensitive)."""
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def subdirs(path: Path) -> list[Path]:
    """Visible subfolders of ``path``, sorted; [] if ``path`` is not a folder."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; [] if it does not exist."""
    return [p for p in sorted(folder.iterdir()) if is_image(p)] if folder.is_dir() else []


def find_mask(gt_dir: Path, stem: str) -> Path | None:
    """``<stem>_mask.<ext>`` first, then ``<stem>.<ext>``, within one mask folder (any image
    extension, case-insensitive); None if neither exists."""
    by_stem: dict[str, Path] = {}
    for path in list_images(gt_dir):
        by_stem.setdefault(path.stem, path)
    return by_stem.get(f"{stem}_mask") or by_stem.get(stem)


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, posix."""
    return path.relative_to(root).as_posix()


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
