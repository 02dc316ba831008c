"""Ingest: generate the synthetic dataset, read each source, map defect names onto the taxonomy,
validate, and only then write the manifest, its roots and the quarantine report.

Bad input (every rule in :data:`vmad_pipeline.datasets.listing.RULES`) is collected over all
sources; with ``ingest.on_error: raise`` (default) the run stops before any of its outputs is
written, naming each file and rule; with ``quarantine`` the offending rows are left out and listed
in the ``ingest_quarantine`` report: the problems found reading, then the rows that break a row
rule of the validation suite (the rest is validated again). Rules about a whole source or the
table stop the run in both modes. Outputs are written by the last node only, so a failing run
leaves the previous manifest, roots and report as they were.

Each node parses its parameters once (:mod:`vmad_pipeline.configs.ingest`) and calls the library:
:mod:`vmad_pipeline.datasets` (synthetic generator, readers, scan, validation) and
:func:`vmad_pipeline.annotation.taxonomy.resolve_defects`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from vmad_pipeline.annotation.taxonomy import resolve_defects
from vmad_pipeline.configs.base import from_dict
from vmad_pipeline.configs.ingest import SyntheticConfig, parse_ingest_params
from vmad_pipeline.datasets import registry
from vmad_pipeline.datasets.listing import quarantine as quarantine_rows
from vmad_pipeline.datasets.listing import raise_problems
from vmad_pipeline.datasets.registry import source_roots
from vmad_pipeline.datasets.synthetic import generate_synthetic
from vmad_pipeline.datasets.validation import (
    failed_rules,
    raise_on_failure,
    validate_or_quarantine,
)

log = logging.getLogger(__name__)


def generate_synthetic_data(params: dict[str, Any]) -> dict[str, np.ndarray]:
    """The embedded default dataset in MVTec AD layout (``ingest.synthetic``; empty when disabled)."""
    cfg = from_dict(SyntheticConfig, params, "ingest.synthetic")
    return generate_synthetic(cfg) if cfg.enabled else {}


def read_sources(
    synthetic_root: str, params: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, str], list[dict[str, str]]]:
    """Read every configured source with its format's reader (incremental, through
    ``ingest.cache``): the rows, the dataset roots (with "<source>:masks" for rasterised masks)
    and every problem found (as dicts)."""
    cfg = parse_ingest_params(params)
    roots = source_roots(cfg.sources, synthetic_root)
    manifest, all_roots, problems = registry.read_sources(cfg, roots)
    return manifest, all_roots, [p.as_dict() for p in problems]


def map_defects(
    manifest: pd.DataFrame,
    problems: list[dict[str, str]],
    taxonomy: dict[str, Any],
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Map defect names (each source through its format's taxonomy map and its ``defect_map``),
    then act on every problem: raise (naming files and rules) or quarantine the rows.

    Returns the manifest to validate and the quarantine report (problems, and rows removed).
    """
    cfg = parse_ingest_params(params)
    out, unknown = resolve_defects(
        manifest, taxonomy, registry.taxonomy_keys(cfg.sources), registry.defect_maps(cfg.sources)
    )
    return quarantine_rows(out, [*problems, *unknown], cfg.on_error)


def validate_manifest(
    manifest: pd.DataFrame,
    roots: dict[str, str],
    quarantine: dict[str, Any],
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Validate with ``ingest.validation``: the manifest, the quarantine report and the Great
    Expectations report (saved even when it fails). Under ``on_error: quarantine`` rows that
    break a row rule are left out and added to the quarantine report first."""
    cfg = parse_ingest_params(params)
    return validate_or_quarantine(manifest, roots, cfg.validation, quarantine, cfg.on_error)


def accept_manifest(
    manifest: pd.DataFrame,
    roots: dict[str, str],
    quarantine: dict[str, Any],
    report: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, str], dict[str, Any]]:
    """Stop the run, naming rows and rules, unless every expectation passed and, under
    ``on_error: raise``, no file had a problem (both listed in one error); then hand the
    manifest, its roots and the quarantine report over to be written, together."""
    if quarantine.get("on_error") == "raise":
        raise_problems(quarantine.get("problems", []), rows=failed_rules(report))
    raise_on_failure(report)
    log.info(
        "manifest: %d images, %d anomalous, %d classes",
        len(manifest),
        int(manifest["label"].sum()),
        manifest["category"].nunique(),
    )
    return manifest, roots, quarantine
