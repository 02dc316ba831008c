"""Curve data per class for ``dvc plots`` and the figures: image ROC and PR (exact), and the PRO
curve sampled on an FPR grid (the AUPRO number itself is computed exactly)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from vmad_pipeline.configs.evaluate import EvaluateConfig
from vmad_pipeline.metrics import image_pr_curve, image_roc_curve, pro_curve


def file_key(category: str) -> str:
    """A class name as a file name (anything but letters, digits, ``._-`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", category)


def _sample_curve(fpr: np.ndarray, pro: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """PRO of the exact polyline at each grid FPR. The polyline has vertical steps (several points
    at one FPR), so plain ``np.interp`` is undefined there: between two FPR values the segment
    runs from the last point at the lower one to the first point at the higher one; at a point's
    own FPR the last (upper) value is taken."""
    right = np.searchsorted(fpr, grid, side="right")  # first point with fpr > g
    left = right - 1  # last point with fpr <= g
    inside = right < fpr.size
    r = np.where(inside, right, left)
    x0, x1, y0, y1 = fpr[left], fpr[r], pro[left], pro[r]
    t = np.divide(grid - x0, x1 - x0, out=np.zeros_like(grid), where=x1 > x0)
    return y0 + (y1 - y0) * t


def curve_data(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    cfg: EvaluateConfig,
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Per class: the image ROC curve (fpr, tpr), the image PR curve (recall, precision) and the
    PRO curve (fpr, pro) sampled at ``curve_points`` FPR values up to ``fpr_limit`` (the AUPRO
    number itself is exact). Keys are class names made file-safe; a class where a curve is
    undefined (one label only / no anomalous pixel) has no file for it."""
    labels = eval_set["label"].to_numpy().astype(np.int64)
    scores = np.asarray(predictions["scores"], dtype=np.float64)
    grid = np.linspace(0.0, cfg.fpr_limit, cfg.curve_points)
    roc, pr, pro = {}, {}, {}
    for cls, idx in eval_set.groupby("category").indices.items():
        key = file_key(str(cls))
        if 0 < labels[idx].sum() < len(idx):
            fpr, tpr = image_roc_curve(labels[idx], scores[idx])
            roc[key] = pd.DataFrame({"fpr": fpr, "tpr": tpr})
            recall, precision = image_pr_curve(labels[idx], scores[idx])
            pr[key] = pd.DataFrame({"recall": recall, "precision": precision})
        class_masks = [masks[i] for i in idx]
        if any(m.any() for m in class_masks):
            curve = pro_curve(class_masks, [predictions["maps"][i] for i in idx], cfg.fpr_limit)
            if curve is not None:
                pro[key] = pd.DataFrame({"fpr": grid, "pro": _sample_curve(*curve, grid)})
    return roc, pr, pro
