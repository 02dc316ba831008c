"""The manifest's rules, computed in plain pandas: one boolean Series per row rule (True = the row
passes) and the per-source table that the per-source rules read.

Files are opened once each, in a thread pool: an image's header (its size), a mask fully (its
size, its bounding box and its values). A mask pixel is positive iff its value is > 0 (the rule
of metrics.md and of :func:`vmad_pipeline.datasets.masks.mask_bbox`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from vmad_pipeline.configs.ingest import ValidationConfig
from vmad_pipeline.datasets.manifest import image_file, mask_file, mask_root_key
from vmad_pipeline.datasets.masks import mask_bbox
from vmad_pipeline.images import read_mask_values

NON_EMPTY_COLUMNS = ("source", "category", "image_path", "sha256")
STRICT_MASK_RULE = "mask values in {0, 1} or {0, 255}"

COVERS_RULE = "mask covers at most max_mask_fraction of the image (not inverted)"
SOURCE_RULES = {  # rule -> column of the source table that must be >= 1
    "source has images": "images",
    "source has anomalous test images": "anomalous_test",
}


class MaskFacts(NamedTuple):
    size: tuple[int, int]  # (width, height)
    bbox: list[int]  # of the pixels > 0; [] if none
    binary: bool  # raw values within {0, 1} or within {0, 255}
    fraction: float  # share of the pixels > 0


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header only, or None if it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # any unreadable file counts as a mismatch
        return None


def _mask_facts(path: Path) -> MaskFacts | None:
    """The mask decoded once: size, bbox of the pixels > 0, binary values; None if unreadable."""
    try:
        array = read_mask_values(
            path
        )  # raw values, on purpose: positive iff > 0 (images.mask_positive)
    except Exception:  # unreadable: the mask size rule fails
        return None
    if array.dtype == bool:
        binary = True
    else:
        top = array.max(initial=0)
        binary = top in (0, 1, 255) and not ((array != 0) & (array != top)).any()
    fraction = float((array > 0).mean()) if array.size else 0.0
    return MaskFacts((array.shape[1], array.shape[0]), mask_bbox(array), bool(binary), fraction)


def _parallel(fn: Callable, paths: list[Path | None], cfg: ValidationConfig, desc: str) -> list:
    """``fn(path)`` for each path (None stays None), in a thread pool, in order."""
    todo = [i for i, p in enumerate(paths) if p is not None]
    out: list = [None] * len(paths)
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        results = pool.map(fn, [paths[i] for i in todo])
        bar = tqdm(results, total=len(todo), desc=desc, unit="file", disable=not cfg.progress)
        for i, result in zip(todo, bar, strict=True):
            out[i] = result
    return out


def _relative(p: object) -> bool:
    text = "" if pd.isna(p) else str(p)
    return not (
        text.startswith("/")
        or PurePosixPath(text).is_absolute()
        or ".." in PurePosixPath(text).parts
        or (len(text) > 1 and text[1] == ":")
    )


def _as_bbox(value: object) -> list[int] | None:
    try:
        return [int(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None


def declared_sources(roots: Iterable[str]) -> list[str]:
    """The sources of ``dataset_roots``: its keys, less the ``<source>:masks`` mask roots."""
    suffix = mask_root_key("")
    return [k for k in roots if not k.endswith(suffix)]


def row_checks(
    frame: pd.DataFrame, roots: dict[str, str], cfg: ValidationConfig
) -> dict[str, pd.Series]:
    """Rule name -> boolean Series (True = the row passes), computed in plain pandas, in the
    order the report lists them."""
    checks = _column_checks(frame, roots)
    checks.update(_file_checks(frame, roots, cfg))
    checks.update(_duplicate_checks(frame))
    return {name: series.astype(bool) for name, series in checks.items()}


def _column_checks(frame: pd.DataFrame, roots: dict[str, str]) -> dict[str, pd.Series]:
    """Rules on the columns alone: values present, masks iff anomalous, paths, sources."""
    checks: dict[str, pd.Series] = {}
    for column in NON_EMPTY_COLUMNS:
        values = frame[column]
        checks[f"{column} not null or empty"] = values.notna() & (
            values.fillna("").astype(str).str.strip() != ""
        )
    has_mask = frame["mask_path"].fillna("").astype(str) != ""
    checks["mask iff anomalous"] = has_mask == (frame["label"] == 1)
    checks["paths relative to the root"] = frame["image_path"].map(_relative) & frame[
        "mask_path"
    ].map(_relative)
    checks["source root declared"] = frame["source"].isin(declared_sources(roots))
    return checks


def _files(
    frame: pd.DataFrame, roots: dict[str, str]
) -> tuple[list[Path | None], list[Path | None]]:
    """The image file of each row of a declared source, and the mask file of each anomalous
    row with a mask path (None elsewhere)."""
    declared = frame["source"].isin(declared_sources(roots))
    anomalous = frame["label"] == 1
    has_mask = frame["mask_path"].fillna("").astype(str) != ""

    def resolve(rows: pd.Series, column: str, where: Callable) -> list[Path | None]:
        return [
            where(roots, str(s), str(p)) if ok else None
            for s, p, ok in zip(frame["source"], frame[column], rows, strict=True)
        ]

    images = resolve(declared & frame["image_path"].notna(), "image_path", image_file)
    masks = resolve(declared & anomalous & has_mask, "mask_path", mask_file)
    return images, masks


def _file_checks(
    frame: pd.DataFrame, roots: dict[str, str], cfg: ValidationConfig
) -> dict[str, pd.Series]:
    """Rules that open the files: they exist, their sizes agree, the masks' pixels and boxes."""
    index = frame.index
    anomalous = frame["label"] == 1
    images, masks = _files(frame, roots)
    image_ok = pd.Series([p is not None and p.is_file() for p in images], index=index)
    mask_ok = pd.Series([p is not None and p.is_file() for p in masks], index=index)
    checks = {"image file exists": image_ok, "mask file exists": ~anomalous | mask_ok}
    readable_images = [p if ok else None for p, ok in zip(images, image_ok, strict=True)]
    image_sizes = _parallel(_header_size, readable_images, cfg, "validate images")
    readable_masks = [p if ok else None for p, ok in zip(masks, mask_ok, strict=True)]
    facts: list[MaskFacts | None] = _parallel(_mask_facts, readable_masks, cfg, "validate masks")
    width = pd.to_numeric(frame["width"], errors="coerce")
    height = pd.to_numeric(frame["height"], errors="coerce")
    stored = list(zip(width, height, strict=True))
    # A missing file is the "exists" rule's business; an unreadable one fails here.
    checks["image size matches width/height"] = pd.Series(
        [(not ok) or s == w for s, ok, w in zip(image_sizes, image_ok, stored, strict=True)],
        index=index,
    )
    checks["width/height within limits"] = width.between(cfg.min_side, cfg.max_side) & (
        height.between(cfg.min_side, cfg.max_side)
    )
    checks["mask size matches image size"] = pd.Series(
        [
            (not ok) or (f is not None and (size is None or f.size == size))
            for f, ok, size in zip(facts, mask_ok, image_sizes, strict=True)
        ],
        index=index,
    )
    checks.update(_mask_checks(frame, facts, cfg))
    return checks


def _mask_checks(
    frame: pd.DataFrame, facts: list[MaskFacts | None], cfg: ValidationConfig
) -> dict[str, pd.Series]:
    """Masks are binary after thresholding (positive iff > 0): an anomalous image needs a positive
    pixel, and its stored bbox must be the one of the thresholded mask (normal images: no bbox);
    ``mask_values: binary`` also requires raw values {0, 1} or {0, 255}."""
    index = frame.index
    read = [f is not None for f in facts]
    anomalous = frame["label"] == 1
    checks = {
        "mask has a positive pixel (> 0)": pd.Series(
            [not r or bool(f.bbox) for f, r in zip(facts, read, strict=True)], index=index
        ),
        "bbox matches the mask (> 0)": pd.Series(
            [
                (f.bbox == _as_bbox(b)) if r else (a or _as_bbox(b) == [])
                for f, r, a, b in zip(facts, read, anomalous, frame["bbox"], strict=True)
            ],
            index=index,
        ),
    }
    # An inverted mask (0 = defect, the defect small) covers nearly the whole image, which then
    # trains as one large defect; the largest real masks seen are far smaller (the synthetic
    # default's reach 13% of the image).
    checks[COVERS_RULE] = pd.Series(
        [not r or f.fraction <= cfg.max_mask_fraction for f, r in zip(facts, read, strict=True)],
        index=index,
    )
    if cfg.mask_values == "binary":
        checks[STRICT_MASK_RULE] = pd.Series(
            [not r or f.binary for f, r in zip(facts, read, strict=True)], index=index
        )
    return checks


def _duplicate_checks(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """The same image content (sha256) in two splits of a source, or in two sources."""
    # A missing hash is the "sha256 not null or empty" rule's business, not a duplicate.
    no_hash = frame["sha256"].fillna("").astype(str) == ""
    splits = frame.groupby(["source", "sha256"], dropna=False)["split"].transform("nunique")
    sources = frame.groupby("sha256", dropna=False)["source"].transform("nunique")
    return {
        "no duplicate sha256 across splits": (splits <= 1) | no_hash,
        "no duplicate sha256 across sources": (sources <= 1) | no_hash,
    }


def source_table(frame: pd.DataFrame, roots: dict[str, str]) -> pd.DataFrame:
    """One row per source (declared or present): its image, anomaly and class counts."""
    present = [s for s in frame["source"].dropna().unique()] if "source" in frame else []
    names = sorted(set(declared_sources(roots)) | {str(s) for s in present})
    anomalous = frame["label"] == 1 if "label" in frame else pd.Series(False, index=frame.index)
    split = frame["split"] if "split" in frame else pd.Series("", index=frame.index)
    g = frame.assign(
        _anomalous=anomalous,
        _anomalous_test=anomalous & (split == "test"),
        _train=split == "train",
        _test=split == "test",
    ).groupby("source")
    table = pd.DataFrame(
        {
            "images": g.size(),
            "anomalous": g["_anomalous"].sum(),
            "anomalous_test": g["_anomalous_test"].sum(),
            "train": g["_train"].sum(),
            "test": g["_test"].sum(),
            "classes": g["category"].nunique(),
        }
    )
    table = table.reindex(names, fill_value=0).astype("int64")
    table.index.name = "source"
    return table.reset_index()
