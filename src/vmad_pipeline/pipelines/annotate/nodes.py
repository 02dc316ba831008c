"""Annotate: assemble RIAD (COCO semantic masks and boxes, question-answer pairs)."""

from __future__ import annotations

from typing import Any

import pandas as pd


def assemble_riad(
    manifest: pd.DataFrame, roots: dict[str, str], taxonomy: dict[str, Any], params: dict[str, Any]
) -> tuple[dict, pd.DataFrame]:
    from vmad_pipeline.annotation.riad import assemble_riad as assemble
    from vmad_pipeline.annotation.taxonomy import Taxonomy

    backend = params.get("backend", "template")
    if backend != "template":
        raise ValueError(f"annotate.backend: unknown backend {backend!r}; known: template")
    coco, qa = assemble(
        manifest,
        roots,
        Taxonomy.from_dict(taxonomy),
        seed=params.get("seed", 0),
        progress=params.get("progress", True),
    )
    return coco, pd.DataFrame.from_records(qa)
