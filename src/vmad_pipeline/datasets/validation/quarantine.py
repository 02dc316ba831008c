"""The validation suite under ``ingest.on_error: quarantine``: rows that break a row rule are left
out, listed in the quarantine report (file, rule id, the suite's rule and why), and the rest is
validated again. Rules about a whole source or the table (a declared source has images and
anomalous test images, required columns, typed columns, a row at all) cannot be fixed by leaving
rows out: they stay fatal, as under ``raise``.

Duplicates (the same content in two splits of a source, or in two sources) quarantine every
copy: which one is right is not known.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from vmad_pipeline.configs.ingest import ValidationConfig
from vmad_pipeline.datasets.listing import RULES, Problem, leave_out, quarantine_report
from vmad_pipeline.datasets.manifest import mask_root_key
from vmad_pipeline.datasets.validation.rules import COVERS_RULE, STRICT_MASK_RULE
from vmad_pipeline.datasets.validation.suite import run_validation

__all__ = ["ROW_RULES", "validate_or_quarantine"]

logger = logging.getLogger(__name__)

_MASK = "mask_path"
_IMAGE = "image_path"
# The suite's row rule -> (the quarantine rule id, listing.VALIDATION_RULES; the column of the
# file it concerns). Every row rule the suite has is here (tests/unit/datasets checks).
ROW_RULES: dict[str, tuple[str, str]] = {
    "label in {0, 1}": ("invalid_row", _IMAGE),
    "source not null or empty": ("invalid_row", _IMAGE),
    "category not null or empty": ("invalid_row", _IMAGE),
    "image_path not null or empty": ("invalid_row", _IMAGE),
    "sha256 not null or empty": ("invalid_row", _IMAGE),
    "mask iff anomalous": ("invalid_row", _IMAGE),
    "paths relative to the root": ("invalid_row", _IMAGE),
    "source root declared": ("invalid_row", _IMAGE),
    "image file exists": ("missing_image", _IMAGE),
    "mask file exists": ("image_without_mask", _MASK),
    "image size matches width/height": ("image_size_mismatch", _IMAGE),
    "width/height within limits": ("image_size_limits", _IMAGE),
    "mask size matches image size": ("mask_size", _MASK),
    "mask has a positive pixel (> 0)": ("empty_mask", _MASK),
    "bbox matches the mask (> 0)": ("bbox_mismatch", _MASK),
    STRICT_MASK_RULE: ("mask_values", _MASK),
    COVERS_RULE: ("inverted_mask", _MASK),
    "no duplicate sha256 across splits": ("duplicate_image", _IMAGE),
    "no duplicate sha256 across sources": ("duplicate_across_sources", _IMAGE),
}


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _detail(
    rule: str, row: Mapping[str, Any], cfg: ValidationConfig, copies: Mapping[str, list[str]]
) -> str:
    """Why the row breaks ``rule``, in its own values where that helps; else the rule."""
    if rule == "width/height within limits":
        return (
            f"{_text(row.get('width'))}x{_text(row.get('height'))} px, outside "
            f"ingest.validation min_side {cfg.min_side} .. max_side {cfg.max_side}"
        )
    if rule == COVERS_RULE:
        return (
            f"its positive pixels cover more than ingest.validation max_mask_fraction "
            f"({cfg.max_mask_fraction:g}) of the image: inverted (0 = defect)?"
        )
    if rule.startswith("no duplicate sha256"):
        me = f"{_text(row.get('source'))}:{_text(row.get(_IMAGE))}"
        others = [c for c in copies.get(_text(row.get("sha256")), []) if c != me]
        more = f" (+{len(others) - 3} more)" if len(others) > 3 else ""
        return f"the same content as {', '.join(others[:3])}{more}; every copy is left out"
    return RULES[ROW_RULES[rule][0]]


def _problems(
    frame: pd.DataFrame,
    checks: Mapping[str, pd.Series],
    roots: Mapping[str, str],
    cfg: ValidationConfig,
) -> list[dict[str, str]]:
    """One problem per (failing row, row rule), in row order."""
    failing = {rule: ~ok.to_numpy() for rule, ok in checks.items() if not ok.all()}
    copies: dict[str, list[str]] = {}
    if any(rule.startswith("no duplicate sha256") for rule in failing):
        for source, image, sha in zip(frame["source"], frame[_IMAGE], frame["sha256"], strict=True):
            copies.setdefault(_text(sha), []).append(f"{_text(source)}:{_text(image)}")
    problems = []
    for i, row in enumerate(frame.to_dict("records")):
        source, image = _text(row.get("source")), _text(row.get(_IMAGE))
        for rule, bad in failing.items():
            if not bad[i]:
                continue
            rule_id, column = ROW_RULES[rule]
            file = _text(row.get(column)) or image
            message = (
                f"row {source}:{image} breaks the validation rule '{rule}' "
                f"({file}{_where(roots, source, column)}): "
                f"{_detail(rule, row, cfg, copies)}"
            )
            problems.append(Problem(source, rule_id, file, message, image).as_dict())
    return problems


def _where(roots: Mapping[str, str], source: str, column: str) -> str:
    """`` under <root>`` of the file's tree (the source's mask root for a mask, if declared)."""
    masks = mask_root_key(source)
    key = masks if column == _MASK and masks in roots else source
    return f" under {roots[key]}" if key in roots else ""


def validate_or_quarantine(
    manifest: pd.DataFrame,
    roots: dict[str, str],
    cfg: ValidationConfig,
    quarantine: Mapping[str, Any],
    on_error: str,
) -> tuple[pd.DataFrame, dict[str, Any], dict]:
    """(manifest, quarantine report, validation report). Under ``raise``, or when every row rule
    passes, the manifest and the quarantine report are returned as they came, with the suite's
    report. Under ``quarantine``, rows breaking row rules are left out and added to the
    quarantine report, and the rest is validated again; that report (with ``quarantined``: the
    first pass's failures per rule) is returned. IngestError if no row is left."""
    report, checks = run_validation(manifest, roots, cfg)
    if on_error == "raise" or report["success"]:
        return manifest, dict(quarantine), report
    frame = manifest.reset_index(drop=True)
    problems = _problems(frame, checks, roots, cfg)
    if not problems:  # only source or table rules failed: nothing to leave out
        return manifest, dict(quarantine), report
    kept, n_dropped = leave_out(frame, problems)
    first = {rule: int((~ok).sum()) for rule, ok in checks.items() if not ok.all()}
    logger.info("validating the %d rows left after quarantine again", len(kept))
    report, _ = run_validation(kept, roots, cfg)
    report["quarantined"] = {"n_rows": n_dropped, "by_rule": first}
    return kept, quarantine_report(on_error, problems, n_dropped, quarantine), report
