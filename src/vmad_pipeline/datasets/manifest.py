"""The unified manifest: one row per image, the contract between ingestion and everything after it.

Every dataset reader returns a frame built by :func:`coerce_manifest`, so the columns, their order
and their dtypes are the same whatever the source. Paths are posix and relative to the source's
declared root; they are never absolute in a stored manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

# name -> pandas dtype, in column order.
MANIFEST_COLUMNS: dict[str, str] = {
    "source": "str",  # dataset name ("mvtec", "synthetic", ...)
    "category": "str",  # object class
    "image_path": "str",  # posix, relative to the source root
    "mask_path": "str",  # posix, relative to the source root; "" for normal images
    "label": "int64",  # 0 normal / 1 anomalous
    "defect_name": "str",  # the source's raw defect folder name; "" for normal images
    "bbox": "object",  # [x, y, w, h] of the mask's positive pixels; [] for normal images
    "split": "str",  # the source's own split: "train" / "test"
    "width": "int64",
    "height": "int64",
    "view": "str",  # camera view (Real-IAD); "" otherwise
    "sha256": "str",  # hex digest of the image file bytes
}

_STR_COLUMNS = [name for name, dtype in MANIFEST_COLUMNS.items() if dtype == "str"]
_INT_COLUMNS = [name for name, dtype in MANIFEST_COLUMNS.items() if dtype == "int64"]


def mask_root_key(source: str) -> str:
    """The ``dataset_roots`` key of a source's mask tree, when its masks live outside its root
    (masks that ingestion rasterises from polygons, e.g. VISION / COCO sources)."""
    return f"{source}:masks"


def image_file(roots: Mapping[str, str], source: str, image_path: str) -> Path:
    """The absolute image file of a manifest row: ``roots[source] / image_path``."""
    return Path(roots[source]) / image_path


def mask_file(roots: Mapping[str, str], source: str, mask_path: str) -> Path | None:
    """The absolute mask file of a manifest row (None for a normal image): under the source's mask
    root ``roots["<source>:masks"]`` when declared, else under the source root. The one place
    where this rule lives."""
    if not mask_path:
        return None
    return Path(roots.get(mask_root_key(source), roots[source])) / mask_path


def row_files(rows: pd.DataFrame, roots: Mapping[str, str]) -> tuple[list[Path], list[Path | None]]:
    """The image files and mask files (None for normal images) of manifest rows."""
    images = [
        image_file(roots, s, p) for s, p in zip(rows["source"], rows["image_path"], strict=True)
    ]
    masks = [mask_file(roots, s, p) for s, p in zip(rows["source"], rows["mask_path"], strict=True)]
    return images, masks


class IngestError(ValueError):
    """Bad input at ingestion; the message names the file(s) and the rule that was broken."""


def empty_manifest() -> pd.DataFrame:
    """A manifest with no rows and the exact columns and dtypes."""
    return coerce_manifest([])


def coerce_manifest(rows: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """Build a manifest frame with exactly :data:`MANIFEST_COLUMNS`, in order, with their dtypes.

    Missing string fields become "", a missing ``bbox`` becomes []; a missing integer field or an
    unknown key raises :class:`IngestError`.
    """
    rows = list(rows)
    known = set(MANIFEST_COLUMNS)
    for i, row in enumerate(rows):
        extra = set(row) - known
        if extra:
            raise IngestError(
                f"manifest row {i} has unknown columns {sorted(extra)}; allowed: {list(MANIFEST_COLUMNS)}"
            )
        missing = [c for c in _INT_COLUMNS if c not in row]
        if missing:
            raise IngestError(
                f"manifest row {i} ({row.get('image_path', '?')}) lacks integer columns {missing}"
            )
    data: dict[str, pd.Series] = {}
    for name, dtype in MANIFEST_COLUMNS.items():
        if dtype == "str":
            values = ["" if row.get(name) is None else str(row.get(name)) for row in rows]
            data[name] = pd.Series(values, dtype=object)
        elif dtype == "int64":
            data[name] = pd.Series([int(row[name]) for row in rows], dtype="int64")
        else:  # bbox
            values = [[int(v) for v in (row.get(name) or [])] for row in rows]
            data[name] = pd.Series(values, dtype=object)
    frame = pd.DataFrame(data, columns=list(MANIFEST_COLUMNS))
    # "str" is object dtype on pandas 2 and the string dtype on pandas 3: the frame follows the
    # installed pandas, exactly as a parquet round trip would.
    for name in _STR_COLUMNS:
        frame[name] = frame[name].astype("str")
    return frame


def manifest_hash(manifest: pd.DataFrame) -> str:
    """Identity of a dataset: its images' sources, paths, contents (sha256) and labels."""
    rows = manifest[["source", "image_path", "sha256", "label"]].astype(str).agg("|".join, axis=1)
    return hashlib.md5("\n".join(sorted(rows)).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
