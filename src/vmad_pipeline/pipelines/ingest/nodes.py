"""Ingest: generate the synthetic dataset, read each source, map defect names onto the taxonomy,
validate, and only then write the manifest, its roots and the quarantine report.

Bad input (every rule in :data:`vmad_pipeline.datasets.scan.RULES`) is collected over all sources;
with ``ingest.on_error: raise`` (default) the run stops before any of its outputs is written,
naming each file and rule; with ``quarantine`` the offending rows are left out and listed in the
``ingest_quarantine`` report. Outputs are written by the last node only, so a failing run leaves
the previous manifest, roots and report as they were.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from vmad_pipeline.configs import ConfigError, from_dict
from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.datasets.registry import FORMATS
from vmad_pipeline.datasets.scan import raise_problems

log = logging.getLogger(__name__)
ON_ERROR = ("raise", "quarantine")


def generate_synthetic_data(params: dict[str, Any]) -> dict[str, np.ndarray]:
    """The embedded default dataset in MVTec AD layout (empty when disabled)."""
    from vmad_pipeline.datasets.synthetic import SyntheticConfig, generate_synthetic

    if not params.get("enabled", True):
        return {}
    cfg = from_dict(
        SyntheticConfig, {k: v for k, v in params.items() if k != "enabled"}, "ingest.synthetic"
    )
    return generate_synthetic(cfg)


def source_roots(sources: list[dict[str, Any]], synthetic_root: str) -> dict[str, str]:
    """Source name -> dataset root; the root ``synthetic`` means the generated tree. Checks each
    entry's name, format and options (ConfigError naming the entry)."""
    from vmad_pipeline.datasets.registry import source_options

    roots = {}
    for i, src in enumerate(sources):
        for key in ("name", "format", "root"):
            if not src.get(key):
                raise ConfigError(f"ingest.sources[{i}].{key}: missing")
        if src["format"] not in FORMATS:
            raise ConfigError(
                f"ingest.sources[{i}].format: unknown format {src['format']!r}; "
                f"known: {', '.join(FORMATS)}"
            )
        if src["name"] in roots or ":" in src["name"]:
            raise ConfigError(
                f"ingest.sources[{i}].name: duplicate or invalid (':') source name {src['name']!r}"
            )
        try:
            source_options(src, f"ingest.sources[{i}]")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        roots[src["name"]] = synthetic_root if src["root"] == "synthetic" else str(src["root"])
    if not roots:
        raise ConfigError("ingest.sources: no source configured")
    return roots


def _settings(params: Mapping[str, Any]) -> dict[str, Any]:
    on_error = params.get("on_error", "raise")
    if on_error not in ON_ERROR:
        raise ConfigError(f"ingest.on_error: {on_error!r} is not one of {ON_ERROR}")
    workers = int(params.get("workers", 1))
    if workers < 0:
        raise ConfigError(f"ingest.workers: {workers} < 0 (0 means one per CPU)")
    return {
        "on_error": on_error,
        "workers": workers,
        "parallel": params.get("parallel", "process"),
        "image_check": params.get("image_check", "header"),
    }


def read_sources(
    synthetic_root: str, params: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, str], list[dict[str, str]]]:
    """Read every configured source with its format's reader: the rows, the dataset roots (with
    "<source>:masks" for rasterised masks) and every problem found (as dicts).

    Files unchanged since the last run (size, mtime) are not read again: the cache at
    ``ingest.cache`` holds what was learnt from them. The cache is saved even when problems were
    found: it records facts about files, not ingestion results, so the re-run after a fix reads
    only the files that changed.
    """
    import os

    from vmad_pipeline.datasets.registry import list_source
    from vmad_pipeline.datasets.scan import FileCache, scan

    settings = _settings(params)
    sources = params.get("sources", [])
    roots = source_roots(sources, synthetic_root)
    masks_dir = params.get("masks_dir", "data/02_intermediate/masks")
    listings, all_roots = [], {}
    for i, src in enumerate(sources):
        listing, src_roots = list_source(src, roots[src["name"]], masks_dir, f"ingest.sources[{i}]")
        listings.append(listing)
        all_roots.update(src_roots)
    cache = FileCache(params.get("cache"))
    workers = settings["workers"] or os.cpu_count() or 1
    manifest, problems = scan(
        listings,
        cache=cache,
        workers=workers,
        parallel=settings["parallel"],
        image_check=settings["image_check"],
        progress=params.get("progress", True),
    )
    cache.save()
    order = {src["name"]: i for i, src in enumerate(sources)}
    manifest = (
        manifest.assign(_order=manifest["source"].map(order))
        .sort_values(["_order", "category", "split", "image_path"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )
    log.info(
        "read %d images from %d source(s); %d problem(s)",
        len(manifest),
        len(listings),
        len(problems),
    )
    return manifest, all_roots, [p.as_dict() for p in problems]


def _unknown_defects(
    manifest: pd.DataFrame,
    taxonomy: dict[str, Any],
    datasets: Mapping[str, str] | None,
    defect_maps: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """``manifest`` with ``defect_id`` / ``defect_type``, and an ``unknown_defect`` problem per row
    whose anomalous defect name resolves nowhere (see annotation/taxonomy.py)."""
    from vmad_pipeline.annotation.taxonomy import Taxonomy
    from vmad_pipeline.datasets.scan import Problem

    tax = Taxonomy.from_dict(taxonomy)
    extra = {}
    for source, mapping in (defect_maps or {}).items():
        try:
            extra[source] = tax.source_map(mapping, f"ingest.sources[{source}].defect_map")
        except ValueError as error:
            raise ConfigError(str(error)) from None
    ids, names = [], []
    unknown: dict[tuple[str, str], list[str]] = defaultdict(list)
    for source, name, label, path in zip(
        manifest["source"],
        manifest["defect_name"],
        manifest["label"],
        manifest["image_path"],
        strict=True,
    ):
        hit = None
        if label == 1:
            dataset = (datasets or {}).get(source, source)
            known, hit = tax.resolve(name, dataset, extra.get(source))
            if not known:
                unknown[(source, name)].append(path)
        ids.append(hit.id if hit else -1)
        names.append(hit.name if hit else "")
    out = manifest.copy()
    out["defect_id"] = pd.Series(ids, dtype="int64", index=out.index)
    out["defect_type"] = pd.Series(names, dtype="str", index=out.index)
    problems = []
    for (source, name), files in unknown.items():
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        for path in files:
            problems.append(
                Problem(
                    source,
                    "unknown_defect",
                    path,
                    f"defect name {name!r} of source {source!r} maps to no taxonomy type "
                    f"({len(files)} file(s): {shown}); add it to conf/base/taxonomy.yml sources "
                    f"or to the source's defect_map (null = no type)",
                    path,
                ).as_dict()
            )
    return out, problems


def apply_taxonomy(
    manifest: pd.DataFrame,
    taxonomy: dict[str, Any],
    datasets: Mapping[str, str] | None = None,
    defect_maps: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Add ``defect_id`` and ``defect_type`` (the 15-type taxonomy) from each defect name;
    IngestError naming source, name and files for a name that maps nowhere. ``datasets``: source
    -> its dataset key in the taxonomy's maps (default: the source name)."""
    out, problems = _unknown_defects(manifest, taxonomy, datasets, defect_maps)
    raise_problems(problems)
    return out


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
    from vmad_pipeline.datasets.scan import RULES

    settings = _settings(params)
    sources = params.get("sources", [])
    datasets = {s["name"]: FORMATS[s["format"]].taxonomy or s["name"] for s in sources}
    defect_maps = {s["name"]: s["defect_map"] for s in sources if s.get("defect_map")}
    out, unknown = _unknown_defects(manifest, taxonomy, datasets, defect_maps)
    problems = [*problems, *unknown]
    if settings["on_error"] == "raise":
        raise_problems(problems)
    drop = {(p["source"], p["image_path"]) for p in problems if p["image_path"]}
    keep = [(s, p) not in drop for s, p in zip(out["source"], out["image_path"], strict=True)]
    out = out[keep].reset_index(drop=True)
    if out.empty:
        raise IngestError(
            f"no images left to ingest after quarantining {len(problems)} problem(s)"
            + ("" if not problems else f"; first: [{problems[0]['rule']}] {problems[0]['message']}")
        )
    if problems:
        log.warning(
            "quarantined %d row(s) for %d problem(s); see the ingest_quarantine report",
            len(drop),
            len(problems),
        )
    report = {
        "on_error": settings["on_error"],
        "n_problems": len(problems),
        "n_rows_quarantined": len(drop),  # images left out (a problem may concern no image)
        "by_rule": {rule: sum(p["rule"] == rule for p in problems) for rule in RULES},
        "rules": RULES,
        "problems": problems,
    }
    return out, report


def validate_manifest(
    manifest: pd.DataFrame, roots: dict[str, str], params: dict[str, Any]
) -> dict[str, Any]:
    """The Great Expectations report (saved even when it fails), with ``ingest.validation``."""
    from vmad_pipeline.validation import validate_manifest as run_suite

    return run_suite(manifest, roots, params.get("validation"))


def accept_manifest(
    manifest: pd.DataFrame,
    roots: dict[str, str],
    quarantine: dict[str, Any],
    report: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, str], dict[str, Any]]:
    """Stop the run, naming rows and rules, unless every expectation passed; then hand the
    manifest, its roots and the quarantine report over to be written, together."""
    from vmad_pipeline.validation import raise_on_failure

    raise_on_failure(report)
    log.info(
        "manifest: %d images, %d anomalous, %d classes",
        len(manifest),
        int(manifest["label"].sum()),
        manifest["category"].nunique(),
    )
    return manifest, roots, quarantine
