"""Great Expectations checks of the manifest at the ingestion boundary, for every source.

Row-level rules that need the file system or several columns (a file exists, sizes agree, a mask
iff anomalous, ...) are computed in pandas into boolean helper columns on a copy of the manifest;
each rule is then one GE expectation on its helper column (``ExpectColumnValuesToBeInSet([True])``),
so the suite, its results and the report stay in GE's vocabulary while failing rows are reported
as ``source:image_path``. Per-source rules (a declared source has images, and anomalous test
images) are expectations on a second batch, one row per source. The manifest may carry extra
columns (``defect_id``, ``defect_type``, ...).

Files are opened once each, in a thread pool: an image's header (its size), a mask fully (its
size, its bounding box and its values). A mask pixel is positive iff its value is > 0 (the rule
of metrics.md and of the readers' ``mask_bbox``); see docs/splits.md for every rule.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from vmad_pipeline.configs import ConfigError, from_dict
from vmad_pipeline.datasets.manifest import (
    MANIFEST_COLUMNS,
    image_file,
    mask_bbox,
    mask_file,
    mask_root_key,
)

logger = logging.getLogger(__name__)

MAX_FAILED_ROWS = 20
INTEGER_COLUMNS = ("label", "width", "height")
INTEGER_TYPES = ["int8", "int16", "int32", "int64", "Int8", "Int16", "Int32", "Int64"]
NON_EMPTY_COLUMNS = ("source", "category", "image_path", "sha256")
MASK_VALUES = ("threshold", "binary")
STRICT_MASK_RULE = "mask values in {0, 1} or {0, 255}"


class ManifestValidationError(ValueError):
    """The manifest broke at least one rule; the message names each rule and its first failing rows."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass(frozen=True)
class ValidationConfig:
    min_side: int = 1  # smallest accepted image width / height (pixels)
    max_side: int = 20000  # largest accepted image width / height (pixels)
    # threshold: a mask pixel is positive iff > 0 (any values; VisA's masks are small integers);
    # binary: also require the raw values to be {0, 1} or {0, 255} (MVTec-style masks)
    mask_values: str = "threshold"
    workers: int = 8  # threads opening files (I/O bound; PIL releases the GIL while decoding)
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.min_side >= 1, "min_side", "must be >= 1")
        _check(self.max_side >= self.min_side, "max_side", "must be >= min_side")
        _check(self.mask_values in MASK_VALUES, "mask_values", f"one of {', '.join(MASK_VALUES)}")
        _check(self.workers >= 1, "workers", "must be >= 1")


class MaskFacts(NamedTuple):
    size: tuple[int, int]  # (width, height)
    bbox: list[int]  # of the pixels > 0; [] if none
    binary: bool  # raw values within {0, 1} or within {0, 255}


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
        with Image.open(path) as image:
            array = np.asarray(image)
    except Exception:  # unreadable: the mask size rule fails
        return None
    if array.dtype == bool:
        binary = True
    else:
        top = array.max(initial=0)
        binary = top in (0, 1, 255) and not ((array != 0) & (array != top)).any()
    return MaskFacts((array.shape[1], array.shape[0]), mask_bbox(array), bool(binary))


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


def _row_checks(
    frame: pd.DataFrame, roots: dict[str, str], cfg: ValidationConfig
) -> dict[str, pd.Series]:
    """Rule name -> boolean Series (True = the row passes), computed in plain pandas."""
    index = frame.index
    anomalous = frame["label"] == 1
    has_mask = frame["mask_path"].fillna("").astype(str) != ""
    checks: dict[str, pd.Series] = {}
    for column in NON_EMPTY_COLUMNS:
        values = frame[column]
        checks[f"{column} not null or empty"] = values.notna() & (
            values.fillna("").astype(str).str.strip() != ""
        )
    checks["mask iff anomalous"] = has_mask == anomalous
    checks["paths relative to the root"] = frame["image_path"].map(_relative) & frame[
        "mask_path"
    ].map(_relative)
    declared = frame["source"].isin(declared_sources(roots))
    checks["source root declared"] = declared

    def resolve(rows: pd.Series, column: str, where: Callable) -> list[Path | None]:
        return [
            where(roots, str(s), str(p)) if ok else None
            for s, p, ok in zip(frame["source"], frame[column], rows, strict=True)
        ]

    images = resolve(declared & frame["image_path"].notna(), "image_path", image_file)
    masks = resolve(declared & anomalous & has_mask, "mask_path", mask_file)
    image_ok = pd.Series([p is not None and p.is_file() for p in images], index=index)
    mask_ok = pd.Series([p is not None and p.is_file() for p in masks], index=index)
    checks["image file exists"] = image_ok
    checks["mask file exists"] = ~anomalous | mask_ok

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
    read = [f is not None for f in facts]
    checks["mask size matches image size"] = pd.Series(
        [
            (not ok) or (f is not None and (size is None or f.size == size))
            for f, ok, size in zip(facts, mask_ok, image_sizes, strict=True)
        ],
        index=index,
    )
    # "binary after thresholding": positive iff > 0; an anomalous image needs a positive pixel,
    # and its stored bbox must be the one of the thresholded mask (normal images: no bbox).
    checks["mask has a positive pixel (> 0)"] = pd.Series(
        [not r or bool(f.bbox) for f, r in zip(facts, read, strict=True)], index=index
    )
    checks["bbox matches the mask (> 0)"] = pd.Series(
        [
            (f.bbox == _as_bbox(b)) if r else (a or _as_bbox(b) == [])
            for f, r, a, b in zip(facts, read, anomalous, frame["bbox"], strict=True)
        ],
        index=index,
    )
    if cfg.mask_values == "binary":
        checks[STRICT_MASK_RULE] = pd.Series(
            [not r or f.binary for f, r in zip(facts, read, strict=True)], index=index
        )

    # A missing hash is the "sha256 not null or empty" rule's business, not a duplicate.
    no_hash = frame["sha256"].fillna("").astype(str) == ""
    splits = frame.groupby(["source", "sha256"], dropna=False)["split"].transform("nunique")
    checks["no duplicate sha256 across splits"] = (splits <= 1) | no_hash
    sources = frame.groupby("sha256", dropna=False)["source"].transform("nunique")
    checks["no duplicate sha256 across sources"] = (sources <= 1) | no_hash
    return {name: series.astype(bool) for name, series in checks.items()}


def declared_sources(roots: Iterable[str]) -> list[str]:
    """The sources of ``dataset_roots``: its keys, less the ``<source>:masks`` mask roots."""
    suffix = mask_root_key("")
    return [k for k in roots if not k.endswith(suffix)]


def _source_table(frame: pd.DataFrame, roots: dict[str, str]) -> pd.DataFrame:
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


SOURCE_RULES = {  # rule -> column of the source table that must be >= 1
    "source has images": "images",
    "source has anomalous test images": "anomalous_test",
}


def _helper_name(rule: str) -> str:
    return "_" + "".join(c if c.isalnum() else "_" for c in rule)


def _run_suite(batches: list[tuple[str, pd.DataFrame, list]]) -> dict[str, bool]:
    """Validate each (name, frame, expectations) through one ephemeral GE context; rule -> success."""
    import great_expectations as gx  # slow import: only when validating
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name="manifest_source")
    outcomes: dict[str, bool] = {}
    for name, frame, expectations in batches:
        batch = (
            source.add_dataframe_asset(name=name)
            .add_batch_definition_whole_dataframe(f"whole_{name}")
            .get_batch(batch_parameters={"dataframe": frame})
        )
        suite = gx.ExpectationSuite(name=f"{name}_suite", expectations=expectations)
        result = batch.validate(suite, result_format="BOOLEAN_ONLY")
        # Several expectations may share one rule: it passes if all of them pass.
        for r in result.results:
            rule = r.expectation_config.meta["rule"]
            outcomes[rule] = outcomes.get(rule, True) and bool(r.success)
    return outcomes


def _quiet_ge() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations  # noqa: F401  (sets its loggers' levels on import)

    # GE is chatty at INFO: quiet all of its loggers.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("great_expectations").setLevel(logging.ERROR)


def validate_manifest(
    manifest: pd.DataFrame, roots: dict[str, str], params: dict[str, Any] | None = None
) -> dict:
    """Check the manifest with Great Expectations; a JSON-serialisable report.

    ``roots`` maps each source name to its dataset root (and ``<source>:masks`` to a mask root);
    ``params`` are :class:`ValidationConfig`'s keys. Report: ``{"success", "n_rows", "settings",
    "results": [{"rule", "success", "n_failed", "failed_rows"}], "sources": {source: {counts...,
    "success", "failed_rules": {rule: n_failed}}}}``; ``failed_rows`` holds up to
    :data:`MAX_FAILED_ROWS` ``source:image_path`` entries (source names for the per-source rules,
    column names for the column rules).
    """
    cfg = from_dict(ValidationConfig, params, "ingest.validation")
    _quiet_ge()
    import great_expectations as gx

    results: list[dict] = []
    frame = manifest.reset_index(drop=True).copy()
    n_rows = int(len(frame))
    meta = lambda rule: {"rule": rule}  # noqa: E731
    required = list(MANIFEST_COLUMNS)
    missing = [c for c in required if c not in frame.columns]
    expectations: list = [
        gx.expectations.ExpectTableColumnsToMatchSet(
            column_set=required, exact_match=False, meta=meta("required columns present")
        ),
        gx.expectations.ExpectTableRowCountToBeBetween(
            min_value=1, meta=meta("manifest not empty")
        ),
    ]
    failed_rows: dict[str, Callable[[], tuple[list[str], int]]] = {
        "required columns present": lambda: (missing, len(missing)),
        "manifest not empty": lambda: ([], 1),
    }
    row_checks: dict[str, pd.Series] = {}
    if not missing and n_rows:
        names = (
            frame["source"].fillna("").astype(str)
            + ":"
            + frame["image_path"].fillna("").astype(str)
        ).tolist()
        typed = [c for c in INTEGER_COLUMNS if not pd.api.types.is_integer_dtype(frame[c])]
        for column in INTEGER_COLUMNS:
            expectations.append(
                gx.expectations.ExpectColumnValuesToBeInTypeList(
                    column=column, type_list=INTEGER_TYPES, meta=meta("integer columns typed")
                )
            )
        failed_rows["integer columns typed"] = lambda: (typed, len(typed))
        expectations.append(
            gx.expectations.ExpectColumnValuesToBeInSet(
                column="label", value_set=[0, 1], meta=meta("label in {0, 1}")
            )
        )
        row_checks["label in {0, 1}"] = frame["label"].isin([0, 1])
        row_checks.update(_row_checks(frame, roots, cfg))
        for rule, ok in row_checks.items():
            bad = ~ok.to_numpy()
            failed_rows[rule] = lambda bad=bad: (
                [n for n, b in zip(names, bad, strict=True) if b],
                int(bad.sum()),
            )
            if rule == "label in {0, 1}":
                continue  # checked on the column itself above
            helper = _helper_name(rule)
            frame[helper] = ok.to_numpy()
            expectations.append(
                gx.expectations.ExpectColumnValuesToBeInSet(
                    column=helper, value_set=[True], meta=meta(rule)
                )
            )
    batches = [("manifest", frame, expectations)]
    table = None
    if "source" in frame.columns and "category" in frame.columns:
        table = _source_table(frame, roots)
        source_expectations = []
        for rule, column in SOURCE_RULES.items():
            source_expectations.append(
                gx.expectations.ExpectColumnValuesToBeBetween(
                    column=column, min_value=1, meta=meta(rule)
                )
            )
            bad = table[column] < 1
            failed_rows[rule] = lambda bad=bad: (table["source"][bad].tolist(), int(bad.sum()))
        batches.append(("sources", table, source_expectations))

    outcomes = _run_suite(batches)
    for rule in dict.fromkeys(e.meta["rule"] for _, _, exps in batches for e in exps):
        success = outcomes.get(rule, False)
        rows, n_failed = failed_rows[rule]()
        results.append(
            {
                "rule": rule,
                "success": bool(success),
                "n_failed": 0 if success else int(n_failed),
                "failed_rows": [] if success else [str(r) for r in rows[:MAX_FAILED_ROWS]],
            }
        )
    report = {
        "success": all(r["success"] for r in results),
        "n_rows": n_rows,
        "settings": asdict(cfg),
        "results": results,
        "sources": _per_source(frame, table, row_checks),
    }
    return _finish(report)


def _per_source(
    frame: pd.DataFrame, table: pd.DataFrame | None, row_checks: dict[str, pd.Series]
) -> dict[str, dict]:
    """Per source: its counts and the rules its rows (or the source itself) failed."""
    if table is None:
        return {}
    out: dict[str, dict] = {}
    failed = {
        rule: (~ok).groupby(frame["source"].astype(str)).sum() for rule, ok in row_checks.items()
    }
    for row in table.to_dict("records"):
        name = str(row.pop("source"))
        rules = {
            rule: int(counts.get(name, 0)) for rule, counts in failed.items() if counts.get(name, 0)
        }
        rules.update({rule: 1 for rule, column in SOURCE_RULES.items() if row[column] < 1})
        out[name] = {
            **{k: int(v) for k, v in row.items()},
            "success": not rules,
            "failed_rules": rules,
        }
    return out


def _finish(report: dict) -> dict:
    failed = [r["rule"] for r in report["results"] if not r["success"]]
    if failed:
        logger.warning("manifest validation failed %d rule(s): %s", len(failed), failed)
    else:
        logger.info(
            "manifest validation passed (%d rows, %d sources, %d rules)",
            report["n_rows"],
            len(report["sources"]),
            len(report["results"]),
        )
    return report


def raise_on_failure(report: dict) -> None:
    """Raise ManifestValidationError naming each failed rule and its first failing rows; no-op on success."""
    if report.get("success", False):
        return
    lines = []
    for result in report.get("results", []):
        if not result["success"]:
            rows = ", ".join(result["failed_rows"][:5]) or "-"
            more = "" if result["n_failed"] <= 5 else f" (+{result['n_failed'] - 5} more)"
            lines.append(
                f"- rule '{result['rule']}' failed for {result['n_failed']} row(s): {rows}{more}"
            )
    raise ManifestValidationError(
        "manifest validation failed:\n" + "\n".join(lines or ["- (no rule results)"])
    )
