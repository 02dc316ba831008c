"""Which images are evaluated: the split's unseen classes, or every class of another tree."""

from __future__ import annotations

from typing import Any

import pandas as pd

from vmad_pipeline.configs.evaluate import EvaluateConfig
from vmad_pipeline.splitting import split_rows


def select_eval_set(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    taxonomy: dict[str, Any],
    cfg: EvaluateConfig,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The test images and their roots: the split's unseen classes (source test folders), or
    every class of ``evaluate.dataset.root`` when set (any MVTec-layout tree)."""
    if cfg.dataset.root:
        from vmad_pipeline.annotation.taxonomy import apply_taxonomy
        from vmad_pipeline.datasets.mvtec import read_mvtec

        name = cfg.dataset.name
        rows = read_mvtec(cfg.dataset.root, source=name, progress=cfg.progress)
        test = rows[rows["split"] == "test"].reset_index(drop=True)
        # MVTec AD's folder names resolve through its taxonomy map, then the type names.
        return apply_taxonomy(test, taxonomy, datasets={name: "mvtec"}), {
            name: str(cfg.dataset.root)
        }
    _, rows = split_rows(manifest, splits)  # the one selection rule, leak check included
    if rows.empty:
        raise ValueError("no test images for the split's test classes")
    return rows.reset_index(drop=True), roots
