"""Image-level detection metrics: AUROC, AP and F1-max over the test images of one class.

Definitions follow the design note ``metrics.md``: AUROC equals
:func:`sklearn.metrics.roc_auc_score`, AP is :func:`sklearn.metrics.average_precision_score`
(step-wise, not trapezoid), F1-max is the maximum of 2PR/(P+R) over the PR curve.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

__all__ = ["image_auroc", "image_ap", "image_f1_max", "image_roc_curve", "image_pr_curve"]


def _check_binary(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (bool labels, float64 scores), both 1-D of equal length."""
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(
            f"labels and scores differ in length: {y.shape[0]} labels vs {s.shape[0]} scores"
        )
    if y.size == 0:
        raise ValueError("no samples: labels and scores are empty")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be 0/1 or bool, got values {sorted(values)}")
    if not np.all(np.isfinite(s)):
        raise ValueError(
            f"scores contain {int(np.sum(~np.isfinite(s)))} non-finite values (nan/inf)"
        )
    y = y.astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "anomalous (1)" if n_pos else "normal (0)"
        raise ValueError(
            f"only one class present in labels (all {y.size} are {only}); the metric is undefined"
        )
    return y, s


def image_auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Exact ROC AUC (equals ``sklearn.metrics.roc_auc_score``); labels 0/1 or bool, 1 = anomalous."""
    y, s = _check_binary(labels, scores)
    return float(roc_auc_score(y, s))


def image_ap(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Average precision, ``sklearn.metrics.average_precision_score`` semantics (step-wise)."""
    y, s = _check_binary(labels, scores)
    return float(average_precision_score(y, s))


def image_f1_max(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Maximum F1 = 2PR/(P+R) over every threshold of the precision-recall curve."""
    y, s = _check_binary(labels, scores)
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def image_roc_curve(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the exact ROC curve (``sklearn.metrics.roc_curve``, collinear points kept),
    from (0, 0) to (1, 1); its trapezoid area is :func:`image_auroc`."""
    y, s = _check_binary(labels, scores)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr


def image_pr_curve(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) of ``sklearn.metrics.precision_recall_curve``, recall decreasing to 0
    (the point (0, 1) is sklearn's convention); :func:`image_ap` is its step-wise area."""
    y, s = _check_binary(labels, scores)
    precision, recall, _ = precision_recall_curve(y, s)
    return recall, precision
