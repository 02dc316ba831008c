"""Great Expectations checks of the manifest at the ingestion boundary.

Row-level rules that need the file system or several columns (a file exists, sizes agree, a mask iff
anomalous, ...) are computed in pandas into boolean helper columns on a copy of the manifest; each
rule is then one GE expectation on its helper column (``ExpectColumnValuesToBeInSet([True])``), so the
suite, its results and the report stay in GE's vocabulary while failing rows are reported by
``image_path``. The manifest may carry extra columns (``defect_id``, ``defect_type``, ...).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image

from vmad_pipeline.datasets.manifest import MANIFEST_COLUMNS, image_file, mask_file

logger = logging.getLogger(__name__)

MAX_FAILED_ROWS = 20
INTEGER_COLUMNS = ("label", "width", "height")
INTEGER_TYPES = ["int8", "int16", "int32", "int64", "Int8", "Int16", "Int32", "Int64"]
NON_EMPTY_COLUMNS = ("source", "category", "image_path", "sha256")


class ManifestValidationError(ValueError):
    """The manifest broke at least one rule; the message names each rule and its first failing rows."""


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header only, or None if it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # any unreadable file counts as a mismatch
        return None


def _as_int_pair(width: object, height: object) -> tuple[int, int] | None:
    try:
        return int(width), int(height)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _row_checks(manifest: pd.DataFrame, roots: dict[str, str]) -> dict[str, pd.Series]:
    """Rule name -> boolean Series (True = the row passes), computed in plain pandas."""
    frame = manifest
    label = frame["label"]
    has_mask = frame["mask_path"].fillna("").astype(str) != ""
    anomalous = label == 1
    checks: dict[str, pd.Series] = {}
    for column in NON_EMPTY_COLUMNS:
        values = frame[column]
        checks[f"{column} not null or empty"] = values.notna() & (
            values.fillna("").astype(str).str.strip() != ""
        )
    checks["mask iff anomalous"] = has_mask == anomalous

    def relative(p: object) -> bool:
        text = "" if pd.isna(p) else str(p)
        return not (
            text.startswith("/")
            or PurePosixPath(text).is_absolute()
            or ".." in PurePosixPath(text).parts
            or (len(text) > 1 and text[1] == ":")
        )

    checks["paths relative to the root"] = frame["image_path"].map(relative) & frame[
        "mask_path"
    ].map(relative)
    checks["source root declared"] = frame["source"].map(lambda s: s in roots)

    def resolve(source: object, rel: object, where=image_file) -> Path | None:
        if source not in roots or pd.isna(rel) or not str(rel):
            return None
        return where(roots, str(source), str(rel))

    images = [resolve(s, p) for s, p in zip(frame["source"], frame["image_path"], strict=True)]
    masks = [
        resolve(s, p, mask_file) if a else None
        for s, p, a in zip(frame["source"], frame["mask_path"], anomalous, strict=True)
    ]
    image_ok = [p is not None and p.is_file() for p in images]
    mask_ok = [
        (not a) or (p is not None and p.is_file()) for p, a in zip(masks, anomalous, strict=True)
    ]
    checks["image file exists"] = pd.Series(image_ok, index=frame.index)
    checks["mask file exists"] = pd.Series(mask_ok, index=frame.index)

    image_sizes = [_header_size(p) if ok else None for p, ok in zip(images, image_ok, strict=True)]
    # A missing file is the "exists" rule's business; an unreadable one fails here.
    size_ok = [
        (not ok) or size == _as_int_pair(w, h)
        for size, ok, w, h in zip(
            image_sizes, image_ok, frame["width"], frame["height"], strict=True
        )
    ]
    checks["image size matches width/height"] = pd.Series(size_ok, index=frame.index)
    mask_size_ok = [
        True if not (a and m_ok and i_size) else _header_size(m) == i_size
        for m, a, m_ok, i_size in zip(masks, anomalous, mask_ok, image_sizes, strict=True)
    ]
    checks["mask size matches image size"] = pd.Series(mask_size_ok, index=frame.index)

    splits = frame.groupby(["source", "sha256"], dropna=False)["split"].transform("nunique")
    checks["no duplicate sha256 across splits"] = splits <= 1
    return {name: series.astype(bool) for name, series in checks.items()}


def _helper_name(rule: str) -> str:
    return "_" + "".join(c if c.isalnum() else "_" for c in rule)


def _run_suite(frame: pd.DataFrame, expectations: list) -> dict[str, bool]:
    """Validate ``frame`` against ``expectations`` through an ephemeral GE context; rule -> success."""
    import great_expectations as gx  # slow import: only when validating
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name="manifest_source")
    asset = source.add_dataframe_asset(name="manifest")
    batch = asset.add_batch_definition_whole_dataframe("whole_manifest").get_batch(
        batch_parameters={"dataframe": frame}
    )
    suite = gx.ExpectationSuite(name="manifest_suite", expectations=expectations)
    result = batch.validate(suite, result_format="BOOLEAN_ONLY")
    outcomes: dict[str, bool] = {}
    # Several expectations may share one rule: it passes if all of them pass.
    for r in result.results:
        rule = r.expectation_config.meta["rule"]
        outcomes[rule] = outcomes.get(rule, True) and bool(r.success)
    return outcomes


def validate_manifest(manifest: pd.DataFrame, roots: dict[str, str]) -> dict:
    """Check the manifest with Great Expectations; a JSON-serialisable report.

    ``roots`` maps each source name to its dataset root. Report: ``{"success", "n_rows", "results":
    [{"rule", "success", "n_failed", "failed_rows"}]}``, ``failed_rows`` holding up to
    :data:`MAX_FAILED_ROWS` image paths (or, for the column rules, the offending column names).
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx  # slow import: only when validating

    # GE is chatty at INFO (and sets some of its loggers' levels on import): quiet all of them.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("great_expectations").setLevel(logging.ERROR)

    results: list[dict] = []
    n_rows = int(len(manifest))

    def add(rule: str, success: bool, failed: list[str], n_failed: int | None = None) -> None:
        results.append(
            {
                "rule": rule,
                "success": bool(success),
                "n_failed": int(len(failed) if n_failed is None else n_failed),
                "failed_rows": [str(f) for f in failed[:MAX_FAILED_ROWS]],
            }
        )

    if n_rows == 0:
        add("manifest not empty", False, [], 1)
        return _finish({"success": False, "n_rows": 0, "results": results})

    required = list(MANIFEST_COLUMNS)
    missing = [c for c in required if c not in manifest.columns]
    frame = manifest.reset_index(drop=True).copy()
    meta = lambda rule: {"rule": rule}  # noqa: E731
    expectations: list = [
        gx.expectations.ExpectTableColumnsToMatchSet(
            column_set=required, exact_match=False, meta=meta("required columns present")
        )
    ]
    failed_rows: dict[str, Callable[[], tuple[list[str], int]]] = {
        "required columns present": lambda: (missing, len(missing))
    }
    if not missing:
        paths = frame["image_path"].fillna("").astype(str)
        typed = [c for c in INTEGER_COLUMNS if not pd.api.types.is_integer_dtype(frame[c])]
        for column in INTEGER_COLUMNS:
            expectations.append(
                gx.expectations.ExpectColumnValuesToBeInTypeList(
                    column=column,
                    type_list=INTEGER_TYPES,
                    meta=meta("integer columns typed"),
                )
            )
        failed_rows["integer columns typed"] = lambda: (typed, len(typed))
        expectations.append(
            gx.expectations.ExpectColumnValuesToBeInSet(
                column="label", value_set=[0, 1], meta=meta("label in {0, 1}")
            )
        )
        bad_label = ~frame["label"].isin([0, 1])
        failed_rows["label in {0, 1}"] = lambda bad=bad_label: (paths[bad].tolist(), int(bad.sum()))
        for rule, ok in _row_checks(frame, roots).items():
            helper = _helper_name(rule)
            frame[helper] = ok.values
            expectations.append(
                gx.expectations.ExpectColumnValuesToBeInSet(
                    column=helper, value_set=[True], meta=meta(rule)
                )
            )
            failed_rows[rule] = lambda bad=~ok: (paths[bad.values].tolist(), int(bad.sum()))

    outcomes = _run_suite(frame, expectations)
    for rule in dict.fromkeys(exp.meta["rule"] for exp in expectations):
        success = outcomes.get(rule, False)
        rows, n_failed = failed_rows[rule]()
        add(rule, success, [] if success else rows, 0 if success else n_failed)
    return _finish(
        {"success": all(r["success"] for r in results), "n_rows": n_rows, "results": results}
    )


def _finish(report: dict) -> dict:
    failed = [r["rule"] for r in report["results"] if not r["success"]]
    if failed:
        logger.warning("manifest validation failed %d rule(s): %s", len(failed), failed)
    else:
        logger.info(
            "manifest validation passed (%d rows, %d rules)",
            report["n_rows"],
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
