"""The threshold rules (calibration, ``training.calibration``, is their use): decision thresholds
from a validation set, and the decision metrics at a threshold.

A rule is ``f1`` (the threshold of the highest F1 over the validation set), ``fpr@<rate>``
(the lowest threshold that flags at most that share of the normal images, or of the normal
pixels: with n normals, at most floor(rate x n) of them score at or above it), or
``fixed@<value>`` (that value, whatever the validation set). The same rules
serve image scores and anomaly maps. Pure functions.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import precision_recall_curve


def _fpr_threshold(normal: np.ndarray, rate: float) -> float:
    """Just above the (k+1)-th highest normal value, k = floor(rate x n): k normals pass."""
    if normal.size == 0:
        raise ValueError("an fpr@ threshold needs normal images in the validation set")
    ordered = np.sort(normal.astype(np.float64))[::-1]
    k = min(math.floor(rate * len(ordered)), len(ordered) - 1)
    return float(np.nextafter(ordered[k], np.inf))


def _f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    if labels.min() == labels.max():
        raise ValueError("an f1 threshold needs normal and anomalous items in the validation set")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def threshold(rule: str, labels, scores) -> float:
    """The threshold of ``rule`` (``f1`` | ``fpr@<rate>`` | ``fixed@<value>``) for ``scores`` (higher = more
    anomalous) with binary ``labels``; decision: anomalous when score >= threshold."""
    if rule.startswith("fixed@"):
        return float(rule[6:])
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if rule == "f1":
        return _f1_threshold(labels, scores)
    return _fpr_threshold(scores[labels == 0], float(rule[4:]))


def pixel_threshold(rule: str, maps, masks) -> float:
    """:func:`threshold` over every pixel of ``maps`` (N x H x W) against ``masks`` (N x H x W)."""
    maps = np.asarray(maps, dtype=np.float32).ravel()
    masks = (np.asarray(masks) > 0).ravel()
    return threshold(rule, masks, maps)


def decision_metrics(labels, scores, at: float) -> dict[str, float | int]:
    """Confusion counts, precision, recall and F1 of ``score >= at``."""
    labels = np.asarray(labels).astype(bool)
    flagged = np.asarray(scores, dtype=np.float64) >= at
    tp, fp = int((flagged & labels).sum()), int((flagged & ~labels).sum())
    fn, tn = int((~flagged & labels).sum()), int((~flagged & ~labels).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {
        "threshold": at,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def references_threshold(loo_scores: np.ndarray, rule: str) -> float | None:
    """The image threshold of one product from its references' leave-one-out scores (each
    reference's image score against the others): ``loo_max``, their maximum, or
    ``prediction@<p>``, the upper bound of a one-sided Student-t prediction interval of level p
    for one more normal score: mean + t(p, n - 1) x sd x sqrt(1 + 1 / n). None with fewer than
    two scores (one reference has nothing to be compared with)."""
    from scipy.stats import t

    scores = np.asarray(loo_scores, np.float64)
    if len(scores) < 2:
        return None
    if rule == "loo_max":
        return float(scores.max())
    p, n = float(rule.split("@", 1)[1]), len(scores)
    return float(scores.mean() + t.ppf(p, n - 1) * scores.std(ddof=1) * math.sqrt(1 + 1 / n))
