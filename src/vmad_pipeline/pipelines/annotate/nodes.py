"""Annotate: assemble RIAD (COCO semantic masks and boxes, question-answer pairs)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from vmad_pipeline.annotation.riad import assemble_riad as assemble
from vmad_pipeline.annotation.riad import template_answerer
from vmad_pipeline.annotation.taxonomy import Taxonomy
from vmad_pipeline.configs.annotate import parse_annotate_params


def assemble_riad(
    manifest: pd.DataFrame, roots: dict[str, str], taxonomy: dict[str, Any], params: dict[str, Any]
) -> tuple[dict, pd.DataFrame]:
    """COCO instances and the QA table. ``params.backend``: ``template`` (offline, default) or
    ``llm`` (an OpenAI-compatible endpoint, ``params.llm``; replies cached on disk, so a rerun
    sends nothing). A failure raises before anything is returned, so nothing is saved."""
    cfg = parse_annotate_params(params)
    if cfg.backend == "llm":
        from vmad_pipeline.annotation.llm import llm_answerer  # the HTTP client, on demand

        answerer, annotator = llm_answerer(cfg.llm, progress=cfg.progress), f"llm:{cfg.llm.model}"
    else:
        answerer, annotator = template_answerer(cfg.seed), "template"
    coco, qa = assemble(
        manifest,
        roots,
        Taxonomy.from_dict(taxonomy),
        seed=cfg.seed,
        progress=cfg.progress,
        answerer=answerer,
        annotator=annotator,
    )
    return coco, pd.DataFrame.from_records(qa)
