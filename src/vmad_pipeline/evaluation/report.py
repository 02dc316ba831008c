"""The metric report: every metric of metrics.md per class and as the unweighted class mean, and
the text metrics by level of the hierarchical text evaluation (``report["hierarchy"]``)."""

from __future__ import annotations

import logging
import math
from dataclasses import fields, replace
from typing import Any

import numpy as np
import pandas as pd

from vmad_pipeline.configs.evaluate import EvaluateConfig
from vmad_pipeline.evaluation.hierarchy import HIERARCHY_METRICS, hierarchy_report, level4_metrics
from vmad_pipeline.evaluation.predictions import Predictions
from vmad_pipeline.metrics import (
    answer_accuracy,
    aupro,
    balanced_answer_accuracy,
    image_ap,
    image_auroc,
    image_f1_max,
    pixel_ap,
    pixel_auroc,
    pro_200_thresholds,
)

log = logging.getLogger(__name__)


def nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "aupro", "pro_200_thresholds")
TEXT_METRICS = (
    "answer_accuracy",
    "answer_balanced_accuracy",
    "p_yes_auroc",
    "defect_type_accuracy",
    "location_accuracy",
    "follow_up_location_accuracy",
    "follow_up_type_accuracy",
    "object_name_accuracy",
    "object_named_share",
)
# The modules' own numbers (docs/experts.md): Anomaly-OV's expert map and score scored as a
# second anomaly map and image score; the answers with no region and with the true one.
REGION_SETTINGS = ("no_region", "oracle_region")
_REGION_FLAGS = {
    "answer_accuracy": "answer_correct",
    "location_accuracy": "location_correct",
    "defect_type_accuracy": "type_correct",
}
MODULE_METRICS = (
    "expert_image_auroc",
    "expert_pixel_auroc",
    "expert_aupro",
    *(f"{s}_{k}" for s in REGION_SETTINGS for k in _REGION_FLAGS),
)
# The answers' words against the model's own evidence (inference.grounding, docs/words.md): the
# drawn mask's location against the truth, the answer's location against the drawn mask's, the
# precision of the types named and the share of defects given a type; and the type head on the
# true masks (what the features know, reported apart like the transductive reference).
GROUNDING_METRICS = (
    "mask_location_accuracy",
    "location_mask_agreement",
    "defect_type_precision",
    "defect_type_named_share",
    "type_probe_accuracy",
)
# Columns shown in the markdown table only where some class has them.
OPTIONAL_METRICS = HIERARCHY_METRICS + MODULE_METRICS + GROUNDING_METRICS
METRICS = (
    IMAGE_METRICS
    + PIXEL_METRICS
    + TEXT_METRICS
    + HIERARCHY_METRICS
    + MODULE_METRICS
    + GROUNDING_METRICS
)


def _mean_flag(flags: pd.Series | None) -> float:
    """Share of True among the set (non-null) flags; NaN when none is set (or no column)."""
    if flags is None:
        return float("nan")
    known = flags.dropna()
    return float(known.astype(bool).mean()) if len(known) else float("nan")


def map_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: list[np.ndarray],
    maps: list[np.ndarray],
    fpr_limit: float,
) -> dict[str, float]:
    """The image and pixel metrics of one class (IMAGE_METRICS + PIXEL_METRICS); NaN where
    undefined (one label only, no anomalous pixel)."""
    nan = float("nan")
    both = 0 < labels.sum() < len(labels)
    has_pixels = any(m.any() for m in masks)
    return {
        "image_auroc": image_auroc(labels, scores) if both else nan,
        "image_ap": image_ap(labels, scores) if both else nan,
        "image_f1_max": image_f1_max(labels, scores) if both else nan,
        "pixel_auroc": pixel_auroc(masks, maps) if has_pixels else nan,
        "pixel_ap": pixel_ap(masks, maps) if has_pixels else nan,
        "aupro": aupro(masks, maps, fpr_limit=fpr_limit) if has_pixels else nan,
        "pro_200_thresholds": pro_200_thresholds(masks, maps, fpr_limit=fpr_limit)
        if has_pixels
        else nan,
    }


def _class_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: list[np.ndarray],
    maps: list[np.ndarray],
    graded: pd.DataFrame,
    fpr_limit: float,
) -> dict[str, float]:
    """Every metric of one class; NaN where undefined."""
    both = 0 < labels.sum() < len(labels)
    parsed = [None if pd.isna(v) else bool(v) for v in graded["said_anomalous"]]
    return {
        **map_metrics(labels, scores, masks, maps, fpr_limit),
        "answer_accuracy": answer_accuracy(labels, parsed),
        "answer_balanced_accuracy": balanced_answer_accuracy(labels, parsed),
        "p_yes_auroc": _p_yes_auroc(labels, graded["p_yes"]) if both else float("nan"),
        "defect_type_accuracy": _mean_flag(graded["type_correct"]),
        "location_accuracy": _mean_flag(graded["location_correct"]),
        # the same asked as follow-ups after the detection answer (multi-turn chat)
        "follow_up_location_accuracy": _mean_flag(graded.get("follow_up_location_correct")),
        "follow_up_type_accuracy": _mean_flag(graded.get("follow_up_type_correct")),
        **level4_metrics(graded),
        **grounding_metrics(graded),
        "object_name_accuracy": _mean_flag(graded["object_correct"]),
        # share of answers that name an object at all (the default answers name none, so the
        # name accuracy above is then undefined, not perfect)
        "object_named_share": float(graded["named_object"].notna().mean())
        if len(graded)
        else float("nan"),
    }


def grounding_metrics(graded: pd.DataFrame) -> dict[str, float]:
    """:data:`GROUNDING_METRICS` of one class's graded answers (NaN where undefined)."""
    typed = graded[graded["type_correct"].notna()] if "type_correct" in graded else graded[:0]
    named = typed[typed["named_type"].notna()]
    return {
        "mask_location_accuracy": _mean_flag(graded.get("mask_location_correct")),
        "location_mask_agreement": _mean_flag(graded.get("location_follows_mask")),
        "defect_type_precision": _mean_flag(named["type_correct"]) if len(named) else float("nan"),
        "defect_type_named_share": len(named) / len(typed) if len(typed) else float("nan"),
        "type_probe_accuracy": _mean_flag(graded.get("probe_type_correct")),
    }


def _module_metrics(
    labels, masks, predictions: Predictions, idx, graded, fpr_limit
) -> dict[str, float]:
    """MODULE_METRICS of one class (NaN where the model has no such module)."""
    out = dict.fromkeys(MODULE_METRICS, float("nan"))
    if predictions.significance is not None:
        scores = np.asarray(predictions.expert_scores, dtype=np.float64)[idx]
        maps = [predictions.significance[i] for i in idx]
        got = map_metrics(labels, scores, masks, maps, fpr_limit)
        out |= {f"expert_{k}": got[k] for k in ("image_auroc", "pixel_auroc", "aupro")}
    for setting in REGION_SETTINGS:
        for metric, flag in _REGION_FLAGS.items():
            out[f"{setting}_{metric}"] = _mean_flag(graded.get(f"{setting}_{flag}"))
    return out


def _p_yes_auroc(labels: np.ndarray, p_yes: pd.Series) -> float:
    """Image AUROC of P(yes) of the detection question (NaN where it was not computed)."""
    if p_yes.isna().any():
        return float("nan")
    return image_auroc(labels, p_yes.to_numpy(dtype=np.float64))


def compute_metrics(
    eval_set: pd.DataFrame,
    predictions: Predictions,
    masks: list[np.ndarray],
    graded: pd.DataFrame,
    cfg: EvaluateConfig,
    decision: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, float], pd.DataFrame]:
    """:func:`class_report` of the unseen classes; classes the model was trained on (rows with
    ``seen`` true: another tree or MMAD under ``evaluate.seen_classes: report``) are reported
    apart, in ``report["seen"]`` (MLflow ``seen/...``, a ``seen`` column in the table), never
    in the unseen mean. With ``decision`` (the thresholds calibrated with the model), the
    decision at its image threshold too (``report["decision"]``)."""
    seen = eval_set["seen"].to_numpy(bool) if "seen" in eval_set else np.zeros(len(eval_set), bool)
    report, flat, table = class_report(*_subset(eval_set, predictions, masks, graded, ~seen), cfg)
    mean = report["mean"]
    log.info(
        "unseen classes (%s score): image AUROC %s, pixel AUROC %s, AUPRO %s, answer accuracy %s",
        cfg.score_rule.source,
        *(mean[k] for k in ("image_auroc", "pixel_auroc", "aupro", "answer_accuracy")),
    )
    if decision:
        report["decision"], flat_decision = _decision(eval_set, predictions, decision, ~seen)
        flat |= flat_decision
    table = table.assign(seen=False)
    if seen.any():
        part, part_flat, part_table = class_report(
            *_subset(eval_set, predictions, masks, graded, seen), cfg
        )
        report["seen"] = {
            "note": "classes the model was trained on: not zero-shot, not in the means above",
            **{k: part[k] for k in ("mean", "per_class", "counts", "hierarchy")},
        }
        flat |= {f"seen/{k}": v for k, v in part_flat.items()}
        table = pd.concat([table, part_table.assign(seen=True)], ignore_index=True)
    return report, flat, table


def _decision(
    eval_set, predictions: Predictions, chosen: dict[str, Any], keep: np.ndarray
) -> tuple[dict, dict[str, float]]:
    """The decision at the model's image threshold (``chosen``) on the unseen images (confusion
    counts, precision, recall, F1), beside the threshold-free metrics; what the threshold came
    from."""
    from vmad_pipeline.evaluation.threshold_rules import decision_metrics

    labels = eval_set["label"].to_numpy()[keep]
    scores = np.asarray(predictions.scores)[keep]
    at = decision_metrics(labels, scores, chosen["image_threshold"])
    keys = ("image_threshold", "pixel_threshold", "image_from", "pixel_from", "calibrated")
    out = {**at, **{k: chosen.get(k) for k in keys}}
    flat = {f"decision/{k}": float(at[k]) for k in ("precision", "recall", "f1", "threshold")}
    return out, {k: v for k, v in flat.items() if np.isfinite(v)}


def _subset(eval_set, predictions: Predictions, masks, graded, keep: np.ndarray):
    """The rows of ``keep`` of everything evaluated (arrays, lists, frames alike)."""
    idx = np.flatnonzero(keep)

    def take(value):
        if isinstance(value, np.ndarray):
            return value[idx]
        if isinstance(value, list):
            return [value[i] for i in idx]
        return value

    rows = eval_set.iloc[idx].reset_index(drop=True)
    taken = {f.name: take(getattr(predictions, f.name)) for f in fields(predictions)}
    return (
        rows,
        replace(predictions, **taken),
        [masks[i] for i in idx],
        graded.iloc[idx].reset_index(drop=True),
    )


def class_report(
    eval_set: pd.DataFrame,
    predictions: Predictions,
    masks: list[np.ndarray],
    graded: pd.DataFrame,
    cfg: EvaluateConfig,
) -> tuple[dict[str, Any], dict[str, float], pd.DataFrame]:
    """Every metric of ``metrics.md`` per class and as the unweighted mean over classes.

    Image AUROC / AP / F1-max on the image scores (``predictions.scores``, made by the score
    rule of ``cfg``); pixel AUROC / AP, exact AUPRO and, separately labelled, the 200-threshold PRO
    on the maps at ``eval_size``; answer accuracy and balanced accuracy, location accuracy and
    defect-type accuracy (where the grading had a taxonomy) from the ``graded`` answers
    (:func:`~vmad_pipeline.evaluation.grading.grade_answers`). Returns (report for metrics.json,
    flat dict for MLflow, per-class table).
    """
    labels = eval_set["label"].to_numpy().astype(np.int64)
    scores = np.asarray(predictions.scores, dtype=np.float64)
    rows = _class_rows(eval_set, predictions, masks, graded, labels, scores, cfg.fpr_limit)
    columns = ["category", "n_images", "n_anomalous", *METRICS, "unparsed_answers"]
    table = pd.DataFrame(rows, columns=[*columns, "seg_found_rate"])
    means = {
        k: float(table[k].mean(skipna=True)) if table[k].notna().any() else math.nan
        for k in METRICS
    }
    report = {
        "mean": {k: nan_to_none(v) for k, v in means.items()},
        "per_class": {
            r["category"]: {
                k: nan_to_none(v) if isinstance(v, float) else v
                for k, v in r.items()
                if k != "category"
            }
            for r in rows
        },
        "counts": {
            "n_images": len(eval_set),
            "n_anomalous": int(labels.sum()),
            "n_classes": len(rows),
            "unparsed_answers": int((~graded["answer_parsed"]).sum()),
        },
        "settings": _settings(cfg, len(eval_set)),
    }
    report["hierarchy"] = hierarchy_report(report, graded, cfg)
    flat = {k: v for k, v in means.items() if not math.isnan(v)}
    flat |= {f"hierarchy/{k}": v for k, v in report["hierarchy"]["mean"].items() if v is not None}
    for r in rows:
        for k in METRICS:
            if not math.isnan(r[k]):
                flat[f"{r['category']}/{k}"] = r[k]
    return report, flat, table


def _class_rows(
    eval_set: pd.DataFrame,
    predictions: Predictions,
    masks: list[np.ndarray],
    graded: pd.DataFrame,
    labels: np.ndarray,
    scores: np.ndarray,
    fpr_limit: float,
) -> list[dict[str, Any]]:
    """One row of every metric, counts included, per class (sorted by name)."""
    rows = []
    for cls, idx in eval_set.groupby("category").indices.items():
        values = _class_metrics(
            labels[idx],
            scores[idx],
            [masks[i] for i in idx],
            [predictions.maps[i] for i in idx],
            graded.iloc[idx],
            fpr_limit,
        )
        values |= _module_metrics(
            labels[idx], [masks[i] for i in idx], predictions, idx, graded.iloc[idx], fpr_limit
        )
        rows.append(
            {
                "category": cls,
                "n_images": len(idx),
                "n_anomalous": int(labels[idx].sum()),
                **values,
                "unparsed_answers": int((~graded["answer_parsed"].iloc[idx]).sum()),
                "seg_found_rate": float(np.mean(predictions.seg_found[idx])),
            }
        )
    return rows


def _settings(cfg: EvaluateConfig, n_images: int) -> dict[str, Any]:
    """How the numbers were computed, recorded beside them."""
    return {
        "eval_size": cfg.eval_size,
        "score_source": cfg.score_rule.source,
        "fusion_weight": cfg.score_rule.fusion_weight if cfg.score_rule.source == "fused" else None,
        "aupro_fpr_limit": cfg.fpr_limit,
        "aupro": "exact (MVTec AD 2021)",
        "pro_200_thresholds": "paper-style approximation (200 thresholds, FPR rescaled); not AUPRO",
        "mean": "unweighted mean over classes (classes where a metric is undefined skipped)",
        "max_new_tokens": cfg.max_new_tokens,
        "n_images": n_images,
    }


HEADLINE = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "answer_balanced_accuracy",
    "p_yes_auroc",
    "defect_type_accuracy",
    "location_accuracy",
    "object_name_accuracy",
)


def headline_metrics(report: dict[str, Any]) -> dict[str, float | None]:
    """The class means worth a glance (``dvc metrics show``): image and pixel AUROC, AUPRO and
    the answers' balanced, defect-type and location accuracy; metrics.json has the rest."""
    return {k: report["mean"][k] for k in HEADLINE}
