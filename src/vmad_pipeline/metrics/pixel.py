"""Pixel-level metrics: pixel AUROC, pixel AP, exact AUPRO, and the 200-threshold PRO approximation.

All pixels of all images given (one class, normal images included) are pooled. Masks are binary
or 0/255: a pixel is positive iff its mask value is > 0.

Implementation note: pooling ~1,700 maps of 256x256 gives ~10^8 pixels, too many for
``sklearn.metrics`` (it argsorts float64 copies with weights: several GB and tens of seconds).
The functions here sort only the negative scores (AUPRO: only the top ``fpr_limit`` share of
them, found with ``np.partition``) and place the positive scores with ``np.searchsorted``. This
gives the same numbers as sklearn and as the exact per-threshold curve (the tests compare against
both); it is not an approximation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["pixel_auroc", "pixel_ap", "aupro", "pro_curve", "pro_200_thresholds"]

logger = logging.getLogger(__name__)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class _Pooled:
    """Scores pooled over all images of a class, split by ground truth."""

    neg: np.ndarray  # (N_neg,) scores of the negative pixels, unordered; callers may reorder it
    pos_scores: np.ndarray  # (N_pos,) scores of the positive pixels
    pos_weights: np.ndarray  # (N_pos,) 1/|region| of each positive pixel's region (only if regions)
    n_regions: int


def _score_array(score_map: np.ndarray) -> np.ndarray:
    a = np.asarray(score_map)
    if a.dtype.kind == "f" and a.dtype.itemsize >= 4:
        return a
    return a.astype(np.float64)


def _pool(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], *, regions: bool) -> _Pooled:
    """Validate shapes and pool scores; with ``regions`` also label 8-connected GT regions."""
    if len(masks) != len(maps):
        raise ValueError(f"got {len(masks)} masks but {len(maps)} anomaly maps")
    if len(masks) == 0:
        raise ValueError("no images: masks and maps are empty")
    negs: list[np.ndarray] = []
    poss: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    n_regions = 0
    for i, (mask, score_map) in enumerate(zip(masks, maps, strict=True)):
        m = np.asarray(mask)
        s = _score_array(score_map)
        if m.shape != s.shape:
            raise ValueError(
                f"image {i}: mask shape {m.shape} differs from anomaly map shape {s.shape}"
            )
        if np.isnan(s).any():
            raise ValueError(f"image {i}: anomaly map contains NaN")
        positive = m > 0
        negs.append(s[~positive])
        if regions:
            if positive.ndim != 2:
                raise ValueError(f"image {i}: AUPRO needs 2-D masks (H, W), got shape {m.shape}")
            labels, n = ndimage.label(positive, structure=_EIGHT_CONNECTED)
            if n:
                lab = labels[positive]  # (N_pos_i,) region ids 1..n
                sizes = np.bincount(lab, minlength=n + 1).astype(np.float64)
                weights.append(1.0 / sizes[lab])
                n_regions += n
        poss.append(s[positive])
    neg = np.concatenate(negs)
    pos = np.concatenate(poss)
    if neg.dtype != pos.dtype:  # maps of mixed dtypes: compare in one precision
        neg, pos = neg.astype(np.float64), pos.astype(np.float64)
    w = np.concatenate(weights) if weights else np.zeros(0, dtype=np.float64)
    return _Pooled(neg=neg, pos_scores=pos, pos_weights=w, n_regions=n_regions)


def _distinct_desc(
    scores: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of ``scores`` in descending order and the cumulative weight (count if
    ``weights`` is None) of all scores >= each value: a tie forms one point, the last of the tie."""
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    s = scores[order]
    cum = (
        np.cumsum(weights[order])
        if weights is not None
        else np.arange(1, s.size + 1, dtype=np.float64)
    )
    last_of_tie = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    return s[last_of_tie], cum[last_of_tie]


def _count_ge(sorted_asc: np.ndarray, t: np.ndarray) -> np.ndarray:
    return sorted_asc.size - np.searchsorted(sorted_asc, t, side="left")


def _count_gt(sorted_asc: np.ndarray, t: np.ndarray) -> np.ndarray:
    return sorted_asc.size - np.searchsorted(sorted_asc, t, side="right")


def _require_both(p: _Pooled) -> None:
    if p.pos_scores.size == 0:
        raise ValueError("no positive pixels in any mask: pixel AUROC/AP are undefined")
    if p.neg.size == 0:
        raise ValueError("no negative pixels in any mask: pixel AUROC/AP are undefined")


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """ROC AUC over all pooled pixels (equals ``roc_auc_score`` on the flattened arrays).

    Mann-Whitney form: mean over positive pixels of P(neg < pos) + 0.5 P(neg == pos).
    """
    p = _pool(masks, maps, regions=False)
    _require_both(p)
    neg = p.neg
    neg.sort()
    less = np.searchsorted(neg, p.pos_scores, side="left").astype(np.float64)
    less_eq = np.searchsorted(neg, p.pos_scores, side="right").astype(np.float64)
    wins = (less + less_eq).sum() * 0.5  # each tie counts one half
    return float(wins / (p.pos_scores.size * neg.size))


def pixel_ap(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """Average precision over all pooled pixels (``average_precision_score`` semantics:
    sum over distinct thresholds of (recall step) x precision)."""
    p = _pool(masks, maps, regions=False)
    _require_both(p)
    neg = p.neg
    neg.sort()
    thresholds, tp = _distinct_desc(p.pos_scores)  # recall only moves at positive scores
    fp = _count_ge(neg, thresholds)
    precision = tp / (tp + fp)
    recall_step = np.diff(np.r_[0.0, tp]) / p.pos_scores.size
    return float(np.sum(recall_step * precision))


def _truncate_at(fpr: np.ndarray, pro: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The points with fpr <= limit, plus (limit, pro linearly interpolated) when the limit falls
    between two points. ``fpr`` is non-decreasing and ends at 1 >= limit."""
    inside = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit
    f, r = fpr[:inside], pro[:inside]
    if inside < fpr.size and fpr[inside - 1] < limit:
        x0, x1 = fpr[inside - 1], fpr[inside]
        y0, y1 = pro[inside - 1], pro[inside]
        f = np.r_[f, limit]
        r = np.r_[r, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)]
    return f, r


def _top_negatives_sorted(neg: np.ndarray, fpr_limit: float) -> np.ndarray:
    """Ascending scores of all negatives >= q, where q is the m-th largest negative and
    m = floor(fpr_limit * N) + 2 (capped at N): every threshold below q has FPR > fpr_limit, so
    the curve up to the limit (and the first point past it) is exact from these alone."""
    m = min(neg.size, int(np.floor(fpr_limit * neg.size)) + 2)
    k = neg.size - m
    if k > 0:
        neg.partition(k)  # in place: neg[k] is the m-th largest
        top = neg[neg >= neg[k]]  # ties with q may sit before k
    else:
        top = neg
    top.sort()
    return top


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Exact normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD 2021).

    Regions are the 8-connected components of each mask; the FPR denominator counts the negative
    pixels of all images (normal images included). Every distinct score is a threshold (no
    sampling); ties form one point; the curve gets (0, 0) prepended and (1, 1) appended, is
    integrated with the trapezoid rule up to ``fpr_limit`` (interpolating at the limit) and divided
    by ``fpr_limit``. Returns NaN (with a warning) when there are no regions.

    Between two distinct positive scores only negatives move, so the curve is horizontal there;
    it is therefore fully described by two points per distinct positive score p: just before p
    (FPR = #neg > p, PRO of the previous point) and at p (FPR = #neg >= p, PRO including p).
    Points past the limit only need to lie past it, so only the top negatives are sorted.
    """
    curve = pro_curve(masks, maps, fpr_limit)
    if curve is None:
        return float("nan")
    fpr, pro = curve
    return float(np.trapezoid(pro, fpr)) / fpr_limit


def pro_curve(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3
) -> tuple[np.ndarray, np.ndarray] | None:
    """The exact PRO curve that :func:`aupro` integrates: (fpr, pro) from (0, 0) up to
    ``fpr_limit`` (the last point interpolated at the limit), or None (with a warning) when it is
    undefined (no ground-truth regions, or no negative pixels). Points can be many (two per
    distinct positive score); sample it for plotting."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    p = _pool(masks, maps, regions=True)
    if p.n_regions == 0:
        logger.warning("AUPRO: no ground-truth regions in %d masks; returning NaN", len(masks))
        return None
    if p.neg.size == 0:
        logger.warning("AUPRO: no negative pixels, FPR undefined; returning NaN")
        return None
    n_neg = p.neg.size
    top = _top_negatives_sorted(p.neg, fpr_limit)
    thresholds, cum_w = _distinct_desc(p.pos_scores, p.pos_weights)
    pro_at = cum_w / p.n_regions  # (T,) PRO at each distinct positive score
    pro_before = np.r_[0.0, pro_at[:-1]]
    fpr_before = _count_gt(top, thresholds) / n_neg
    fpr_at = _count_ge(top, thresholds) / n_neg
    fpr = np.empty(2 * thresholds.size + 2)
    pro = np.empty_like(fpr)
    fpr[0], pro[0] = 0.0, 0.0
    fpr[1:-1:2], pro[1:-1:2] = fpr_before, pro_before
    fpr[2:-1:2], pro[2:-1:2] = fpr_at, pro_at
    fpr[-1], pro[-1] = 1.0, 1.0
    np.clip(fpr, 0.0, 1.0, out=fpr)
    np.clip(pro, 0.0, 1.0, out=pro)
    return _truncate_at(fpr, pro, fpr_limit)


def pro_200_thresholds(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3
) -> float:
    """NOT AUPRO: the 200-threshold approximation used by several zero-shot repositories.

    As in anomalib v0 / the AnomalyCLIP and AnomalyGPT ``cal_pro_score``: 200 evenly spaced
    thresholds from the minimum to the maximum of all scores (equivalently, on min-max rescaled
    scores), a pixel is predicted anomalous when score > threshold; at each threshold the mean
    per-region overlap and the FPR; keep the thresholds with FPR < ``fpr_limit``, min-max rescale
    those FPR values to [0, 1] and take the trapezoid area (``sklearn.metrics.auc``). The FPR
    rescaling makes the result differ from AUPRO (metrics.md worked example: 0.625 vs 0.7222).
    Report it only under this name. Returns NaN (with a warning) when undefined.
    """
    p = _pool(masks, maps, regions=True)
    if p.n_regions == 0 or p.neg.size == 0:
        logger.warning("pro_200_thresholds: no regions or no negative pixels; returning NaN")
        return float("nan")
    lo = float(min(p.neg.min(), p.pos_scores.min()))
    hi = float(max(p.neg.max(), p.pos_scores.max()))
    thresholds = lo + (hi - lo) / 200 * np.arange(200)  # (200,)
    # A score s exceeds thresholds[:j] where j = #thresholds < s; count, then suffix-sum.
    neg_j = np.searchsorted(thresholds, p.neg, side="left")
    pos_j = np.searchsorted(thresholds, p.pos_scores, side="left")
    neg_above = np.cumsum(np.bincount(neg_j, minlength=201)[::-1])[::-1][1:]  # (200,) #neg > th
    pos_above = np.cumsum(np.bincount(pos_j, weights=p.pos_weights, minlength=201)[::-1])[::-1][1:]
    pros = pos_above / p.n_regions
    fprs = neg_above / p.neg.size
    keep = fprs < fpr_limit
    f, r = fprs[keep], pros[keep]
    if f.size < 2 or f.max() == f.min():
        logger.warning(
            "pro_200_thresholds: fewer than two distinct FPR values below %s; returning NaN",
            fpr_limit,
        )
        return float("nan")
    f = (f - f.min()) / (f.max() - f.min())
    # sklearn.metrics.auc on a monotonic (here decreasing) x: |trapezoid|.
    return float(abs(np.trapezoid(r, f)))
