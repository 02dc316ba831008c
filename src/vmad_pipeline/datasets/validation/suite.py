"""Great Expectations checks of the manifest at the ingestion boundary, for every source.

Row-level rules that need the file system or several columns (a file exists, sizes agree, a mask
iff anomalous, ...) are computed in pandas (:mod:`.rules`) into boolean helper columns on a copy of
the manifest; each rule is then one GE expectation on its helper column
(``ExpectColumnValuesToBeInSet([True])``), so the suite, its results and the report stay in GE's
vocabulary while failing rows are reported as ``source:image_path``. Per-source rules (a declared
source has images, and anomalous test images) are expectations on a second batch, one row per
source. The manifest may carry extra columns (``defect_id``, ``defect_type``, ...). See
docs/splits.md for every rule.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from vmad_pipeline.configs.base import from_dict
from vmad_pipeline.configs.ingest import ValidationConfig
from vmad_pipeline.datasets.manifest import MANIFEST_COLUMNS
from vmad_pipeline.datasets.validation.rules import SOURCE_RULES, row_checks, source_table

logger = logging.getLogger(__name__)

MAX_FAILED_ROWS = 20
INTEGER_COLUMNS = ("label", "width", "height")
INTEGER_TYPES = ["int8", "int16", "int32", "int64", "Int8", "Int16", "Int32", "Int64"]

# A rule's failing rows (``source:image_path``, or source / column names) and their number.
Failing = Callable[[], tuple[list[str], int]]


class ManifestValidationError(ValueError):
    """The manifest broke at least one rule; the message names each rule and its first failing rows."""


@dataclass
class _Rules:
    """The expectations of one batch, each tagged with its rule (several may share one), and
    how to name each rule's failing rows."""

    expectations: list = field(default_factory=list)
    failing: dict[str, Failing] = field(default_factory=dict)

    def expect(self, rule: str, expectation: type, **kwargs: Any) -> None:
        self.expectations.append(expectation(**kwargs, meta={"rule": rule}))


def _helper_name(rule: str) -> str:
    return "_" + "".join(c if c.isalnum() else "_" for c in rule)


def _table_rules(frame: pd.DataFrame, rules: _Rules) -> list[str]:
    """The required columns and a row at least; returns the missing columns."""
    import great_expectations as gx

    required = list(MANIFEST_COLUMNS)
    missing = [c for c in required if c not in frame.columns]
    rules.expect(
        "required columns present",
        gx.expectations.ExpectTableColumnsToMatchSet,
        column_set=required,
        exact_match=False,
    )
    rules.expect("manifest not empty", gx.expectations.ExpectTableRowCountToBeBetween, min_value=1)
    rules.failing["required columns present"] = lambda: (missing, len(missing))
    rules.failing["manifest not empty"] = lambda: ([], 1)
    return missing


def _row_rules(
    frame: pd.DataFrame, roots: dict[str, str], cfg: ValidationConfig, rules: _Rules
) -> dict[str, pd.Series]:
    """Typed integer columns, then every row rule as an expectation on its helper column (added
    to ``frame``); returns rule -> passing rows."""
    import great_expectations as gx

    names = (
        frame["source"].fillna("").astype(str) + ":" + frame["image_path"].fillna("").astype(str)
    ).tolist()
    typed = [c for c in INTEGER_COLUMNS if not pd.api.types.is_integer_dtype(frame[c])]
    for column in INTEGER_COLUMNS:
        rules.expect(
            "integer columns typed",
            gx.expectations.ExpectColumnValuesToBeInTypeList,
            column=column,
            type_list=INTEGER_TYPES,
        )
    rules.failing["integer columns typed"] = lambda: (typed, len(typed))
    rules.expect(
        "label in {0, 1}",
        gx.expectations.ExpectColumnValuesToBeInSet,
        column="label",
        value_set=[0, 1],
    )
    checks = {"label in {0, 1}": frame["label"].isin([0, 1])}
    checks.update(row_checks(frame, roots, cfg))
    for rule, ok in checks.items():
        bad = ~ok.to_numpy()
        rules.failing[rule] = lambda bad=bad: (
            [n for n, b in zip(names, bad, strict=True) if b],
            int(bad.sum()),
        )
        if rule == "label in {0, 1}":
            continue  # checked on the column itself above
        helper = _helper_name(rule)
        frame[helper] = ok.to_numpy()
        rules.expect(
            rule, gx.expectations.ExpectColumnValuesToBeInSet, column=helper, value_set=[True]
        )
    return checks


def _source_rules(table: pd.DataFrame) -> _Rules:
    """Each per-source rule: its column of the source table is >= 1 for every source."""
    import great_expectations as gx

    rules = _Rules()
    for rule, column in SOURCE_RULES.items():
        rules.expect(
            rule, gx.expectations.ExpectColumnValuesToBeBetween, column=column, min_value=1
        )
        bad = table[column] < 1
        rules.failing[rule] = lambda bad=bad: (table["source"][bad].tolist(), int(bad.sum()))
    return rules


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


def _results(
    batches: list[tuple[str, pd.DataFrame, list]],
    outcomes: dict[str, bool],
    failing: dict[str, Failing],
) -> list[dict]:
    """One result per rule, in the order of the expectations."""
    results = []
    for rule in dict.fromkeys(e.meta["rule"] for _, _, exps in batches for e in exps):
        success = outcomes.get(rule, False)
        rows, n_failed = failing[rule]()
        results.append(
            {
                "rule": rule,
                "success": bool(success),
                "n_failed": 0 if success else int(n_failed),
                "failed_rows": [] if success else [str(r) for r in rows[:MAX_FAILED_ROWS]],
            }
        )
    return results


def validate_manifest(
    manifest: pd.DataFrame,
    roots: dict[str, str],
    params: ValidationConfig | dict[str, Any] | None = None,
) -> dict:
    """Check the manifest with Great Expectations; a JSON-serialisable report (see
    :func:`run_validation`, which also returns each row rule's passing rows)."""
    return run_validation(manifest, roots, params)[0]


def run_validation(
    manifest: pd.DataFrame,
    roots: dict[str, str],
    params: ValidationConfig | dict[str, Any] | None = None,
) -> tuple[dict, dict[str, pd.Series]]:
    """Check the manifest with Great Expectations; a JSON-serialisable report.

    ``roots`` maps each source name to its dataset root (and ``<source>:masks`` to a mask root);
    ``params`` is a :class:`ValidationConfig` or its keys. Report: ``{"success", "n_rows",
    "settings", "results": [{"rule", "success", "n_failed", "failed_rows"}], "sources": {source:
    {counts..., "success", "failed_rules": {rule: n_failed}}}}``; ``failed_rows`` holds up to
    :data:`MAX_FAILED_ROWS` ``source:image_path`` entries (source names for the per-source rules,
    column names for the column rules).

    Also returns row rule -> boolean Series (True = the row passes) over the manifest's rows in
    order (empty when the row rules could not run: columns missing, no rows).
    """
    if isinstance(params, ValidationConfig):
        cfg = params
    else:
        cfg = from_dict(ValidationConfig, params, "ingest.validation")
    _quiet_ge()
    frame = manifest.reset_index(drop=True).copy()
    n_rows = int(len(frame))
    rules = _Rules()
    missing = _table_rules(frame, rules)
    checks = _row_rules(frame, roots, cfg, rules) if not missing and n_rows else {}
    batches = [("manifest", frame, rules.expectations)]
    failing = dict(rules.failing)
    table = None
    if "source" in frame.columns and "category" in frame.columns:
        table = source_table(frame, roots)
        sources = _source_rules(table)
        batches.append(("sources", table, sources.expectations))
        failing.update(sources.failing)
    results = _results(batches, _run_suite(batches), failing)
    report = {
        "success": all(r["success"] for r in results),
        "n_rows": n_rows,
        "settings": asdict(cfg),
        "results": results,
        "sources": _per_source(frame, table, checks),
    }
    return _finish(report), checks


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


def failed_rules(report: dict) -> list[str]:
    """One line per failed rule of a validation report, with its first failing rows."""
    lines = []
    for result in report.get("results", []):
        if not result["success"]:
            rows = ", ".join(result["failed_rows"][:5]) or "-"
            more = "" if result["n_failed"] <= 5 else f" (+{result['n_failed'] - 5} more)"
            lines.append(
                f"- rule '{result['rule']}' failed for {result['n_failed']} row(s): {rows}{more}"
            )
    return lines


def raise_on_failure(report: dict) -> None:
    """Raise ManifestValidationError naming each failed rule and its first failing rows; no-op on success."""
    if report.get("success", False):
        return
    raise ManifestValidationError(
        "manifest validation failed:\n" + "\n".join(failed_rules(report) or ["- (no rule results)"])
    )
