"""Hierarchical text evaluation (docs/evaluation.md): the text metrics by level. The idea of a
task hierarchy "from binary classification to complex reasoning" is the seed's (MAU-Set, in the
MAU-GPT abstract); the levels between (defect type, location), the questions asked, the metric
per level (the detection answer's accuracy, the follow-ups' parsed accuracies, ROUGE-L F of the
long follow-ups against the RIAD answers) and the references are ours."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from vmad_pipeline import prompts
from vmad_pipeline.configs.evaluate import EvaluateConfig
from vmad_pipeline.evaluation.grading import LONG_KINDS
from vmad_pipeline.metrics.text import ROUGE_L_SETTINGS

# Level 4 of the hierarchical text evaluation (docs/evaluation.md): per long follow-up kind the
# mean ROUGE-L F over the anomalous images asked, and the mean of the three; NaN where not asked.
# Beside them, the long answers' checks (issue 26): the share of images whose long answers
# say nothing their detection answer contradicts, and the share of long answers that break off.
HIERARCHY_METRICS = (
    *(f"level4_{k}_rouge_l" for k in LONG_KINDS),
    "level4_rouge_l",
    "level4_consistency",
    "level4_broken_share",
)
# The levels (binary -> defect type -> location -> description and reasoning; the ends are
# MAU-Set's, the middle ours) and the table metric each one is: the detection answer, the
# follow-ups asked after it.
HIERARCHY_LEVELS = {
    "level1_binary": "answer_accuracy",
    "level2_type": "follow_up_type_accuracy",
    "level3_location": "follow_up_location_accuracy",
    **{f"level4_{k}": f"level4_{k}_rouge_l" for k in LONG_KINDS},
    "level4_rouge_l": "level4_rouge_l",
}


def _mean_value(values: pd.Series | None) -> float:
    """Mean of the set (non-null) values; NaN when none is set (or no column)."""
    if values is None:
        return float("nan")
    known = pd.to_numeric(values.dropna())
    return float(known.mean()) if len(known) else float("nan")


def level4_metrics(graded: pd.DataFrame) -> dict[str, float]:
    """HIERARCHY_METRICS of one class: per long kind the mean ROUGE-L F of its graded answers
    (``follow_up_<kind>_rouge_l``), ``level4_rouge_l``, the mean of the kinds' means, and the
    long answers' checks (``grading._long_checks``)."""
    out = {
        f"level4_{k}_rouge_l": _mean_value(graded.get(f"follow_up_{k}_rouge_l")) for k in LONG_KINDS
    }
    kinds = [v for v in out.values() if not math.isnan(v)]
    out["level4_rouge_l"] = float(np.mean(kinds)) if kinds else float("nan")
    consistent = graded.get("level4_consistent")
    out["level4_consistency"] = _mean_value(
        None if consistent is None else consistent.astype(float)
    )
    asked = sum(int(c.notna().sum()) for c in _columns(graded, "answer"))
    broken = graded.get("level4_broken")
    out["level4_broken_share"] = (
        float(broken.fillna(0).sum()) / asked if (asked and broken is not None) else float("nan")
    )
    return out


def _columns(graded: pd.DataFrame, suffix: str) -> list[pd.Series]:
    """The long kinds' ``follow_up_<kind>_<suffix>`` columns that ``graded`` has."""
    columns = (graded.get(f"follow_up_{k}_{suffix}") for k in LONG_KINDS)
    return [c for c in columns if c is not None]


def hierarchy_report(
    report: dict[str, Any], graded: pd.DataFrame, cfg: EvaluateConfig
) -> dict[str, Any]:
    """The text metrics by level (HIERARCHY_LEVELS), as the class mean and per class, taken
    from the report's own metrics (one number per level, computed once); what each level is
    and how level 4 is scored. The hierarchy's idea is MAU-Set's; its levels, questions, ROUGE-L
    and the RIAD references are ours (docs/evaluation.md)."""

    def levels(values: dict[str, Any]) -> dict[str, Any]:
        return {level: values[metric] for level, metric in HIERARCHY_LEVELS.items()}

    long_answers, scored = _columns(graded, "answer"), _columns(graded, "rouge_l")
    broken = graded.get("level4_broken")
    return {
        "levels": dict(HIERARCHY_LEVELS),
        "mean": levels(report["mean"]),
        "per_class": {cls: levels(row) for cls, row in report["per_class"].items()},
        "counts": {
            "level4_asked": sum(int(c.notna().sum()) for c in long_answers),
            "level4_graded": sum(int(c.notna().sum()) for c in scored),
            "level4_broken": 0 if broken is None else int(broken.fillna(0).sum()),
        },
        "level4": {
            "enabled": cfg.hierarchy.enabled,
            "asked": "anomalous images, after their detection answer (normal images: not asked)",
            "questions": {k: prompts.FOLLOW_UPS[k][0] for k in LONG_KINDS},
            "reference": f"the image's RIAD answer, the class named '{prompts.GENERIC_OBJECT}'",
            "metric": ROUGE_L_SETTINGS,
            "max_new_tokens": cfg.hierarchy.max_new_tokens,
        },
    }
