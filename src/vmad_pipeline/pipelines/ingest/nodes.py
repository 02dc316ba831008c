"""Ingest: generate the synthetic dataset, read each source, build and validate the manifest."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from vmad_pipeline.configs import ConfigError, from_dict

log = logging.getLogger(__name__)
READERS = ("mvtec",)  # format name -> reader; more formats arrive with the real-data issue


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
    """Source name -> dataset root; the root ``synthetic`` means the generated tree."""
    roots = {}
    for i, src in enumerate(sources):
        for key in ("name", "format", "root"):
            if not src.get(key):
                raise ConfigError(f"ingest.sources[{i}].{key}: missing")
        if src["format"] not in READERS:
            raise ConfigError(
                f"ingest.sources[{i}].format: unknown format {src['format']!r}; known: {', '.join(READERS)}"
            )
        if src["name"] in roots:
            raise ConfigError(f"ingest.sources[{i}].name: duplicate source name {src['name']!r}")
        roots[src["name"]] = synthetic_root if src["root"] == "synthetic" else str(src["root"])
    if not roots:
        raise ConfigError("ingest.sources: no source configured")
    return roots


def read_sources(
    synthetic_root: str, params: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read every configured source with its format reader into one manifest."""
    from vmad_pipeline.datasets.mvtec import read_mvtec

    roots = source_roots(params.get("sources", []), synthetic_root)
    frames = [
        read_mvtec(root, source=name, progress=params.get("progress", True))
        for name, root in roots.items()
    ]
    return pd.concat(frames, ignore_index=True), roots


def apply_taxonomy(manifest: pd.DataFrame, taxonomy: dict[str, Any]) -> pd.DataFrame:
    """Add ``defect_id`` and ``defect_type`` (the 15-type taxonomy) from each defect name."""
    from vmad_pipeline.annotation.taxonomy import Taxonomy

    tax = Taxonomy.from_dict(taxonomy)
    ids, names, unknown = [], [], set()
    for name, label in zip(manifest["defect_name"], manifest["label"], strict=True):
        hit = tax.lookup(name) if label == 1 and name else None
        if label == 1 and hit is None:
            unknown.add(name)
        ids.append(hit.id if hit else -1)
        names.append(hit.name if hit else "")
    if unknown:
        log.warning(
            "defect names not in the taxonomy (defect_id -1): %s", ", ".join(sorted(unknown))
        )
    out = manifest.copy()
    out["defect_id"] = pd.Series(ids, dtype="int64")
    out["defect_type"] = pd.Series(names, dtype="str")
    return out


def validate_manifest(manifest: pd.DataFrame, roots: dict[str, str]) -> dict[str, Any]:
    """The Great Expectations report (saved even when it fails)."""
    from vmad_pipeline.validation import validate_manifest as run_suite

    return run_suite(manifest, roots)


def accept_manifest(manifest: pd.DataFrame, report: dict[str, Any]) -> pd.DataFrame:
    """Stop the run, naming rows and rules, unless every expectation passed."""
    from vmad_pipeline.validation import raise_on_failure

    raise_on_failure(report)
    log.info(
        "manifest: %d images, %d anomalous, %d classes",
        len(manifest),
        int(manifest["label"].sum()),
        manifest["category"].nunique(),
    )
    return manifest
