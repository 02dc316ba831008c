"""Which images are evaluated: the split's unseen classes, or every class of another tree; and the
check that a model is never scored as zero-shot on a class it was trained on."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from vmad_pipeline.configs.evaluate import EvaluateConfig
from vmad_pipeline.splitting import SplitLeakError, seen_mask, split_hash, split_rows

log = logging.getLogger(__name__)


class SeenClassError(SplitLeakError):
    """The model would be evaluated as zero-shot on classes it was trained on."""


def select_eval_set(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    taxonomy: dict[str, Any],
    cfg: EvaluateConfig,
    trained_on: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The test images and their roots: the split's unseen classes (source test folders), or
    every class of ``evaluate.dataset.root`` when set (any MVTec-layout tree). A ``seen`` column
    marks the rows of classes the model was trained on (``trained_on``, the checkpoint's record):
    in the split's test classes they stop the run; in another tree they are refused or reported
    apart, by ``evaluate.seen_classes``."""
    if cfg.dataset.root:
        rows, eval_roots = _external_rows(cfg, taxonomy)
    else:
        _, rows = split_rows(manifest, splits)  # the one selection rule, leak check included
        if rows.empty:
            raise ValueError("no test images for the split's test classes")
        rows, eval_roots = rows.reset_index(drop=True), roots
    rows = rows.assign(seen=seen_mask(rows, trained_on or {}).to_numpy())
    check_seen(rows, trained_on or {}, cfg, splits=None if cfg.dataset.root else splits)
    return rows, eval_roots


def _external_rows(cfg: EvaluateConfig, taxonomy: dict[str, Any]):
    from vmad_pipeline.annotation.taxonomy import apply_taxonomy
    from vmad_pipeline.datasets.mvtec import read_mvtec

    name = cfg.dataset.name
    rows = read_mvtec(cfg.dataset.root, source=name, progress=cfg.progress)
    test = rows[rows["split"] == "test"].reset_index(drop=True)
    # MVTec AD's folder names resolve through its taxonomy map, then the type names.
    return apply_taxonomy(test, taxonomy, datasets={name: "mvtec"}), {name: str(cfg.dataset.root)}


def check_seen(
    rows: pd.DataFrame,
    trained_on: dict[str, Any],
    cfg: EvaluateConfig,
    *,
    splits: dict[str, Any] | None,
    what: str = "images",
) -> None:
    """Stop when rows of training classes would be scored: always for the split's own test
    classes (``splits`` given: the split changed after training), and for another tree or MMAD
    when ``evaluate.seen_classes: refuse``; else log that they are reported apart."""
    if not trained_on:
        log.warning("the model records no training classes (an older checkpoint): unchecked")
        return
    seen = sorted(set(rows.loc[rows["seen"], "category"]))
    if splits is not None:
        mine, yours = trained_on.get("split_hash"), split_hash(splits)
        if seen:
            raise SeenClassError(
                f"the split's test classes {', '.join(seen)} were training classes of this model "
                f"(model trained with split {mine}, splits.json is {yours}: the split changed "
                "after training). Retrain (`kedro run --pipeline train`) or restore the split "
                "the model was trained with; nothing was evaluated."
            )
        if mine != yours:
            log.warning(
                "splits.json (%s) is not the split this model was trained with (%s); its test "
                "classes are still unseen by the model, so the evaluation stands",
                yours,
                mine,
            )
        return
    if seen and cfg.seen_classes == "refuse":
        raise SeenClassError(
            f"{what} of {', '.join(seen)}: classes this model was trained on "
            f"(evaluate.seen_classes: refuse). Set evaluate.seen_classes: report to score them "
            "in a separate 'seen' section, or leave them out; nothing was evaluated."
        )
    if seen:
        log.warning(
            "%s of training classes %s are reported apart ('seen'), not in the unseen mean",
            what,
            ", ".join(seen),
        )
