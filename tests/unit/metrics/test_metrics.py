"""Metrics against the worked example of metrics.md, sklearn, and a slow obvious AUPRO."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from vmad_pipeline.metrics import (
    aupro,
    image_ap,
    image_auroc,
    image_f1_max,
    image_pr_curve,
    image_roc_curve,
    pixel_ap,
    pixel_auroc,
    pro_200_thresholds,
    pro_curve,
)

NEGATIVE_SCORES = [0.8, 0.6, 0.40, 0.35, 0.30, 0.25, 0.20, 0.15, 0.10]


def worked_example() -> tuple[np.ndarray, np.ndarray]:
    """metrics.md: one 3x4 image, R1 = {(0,0),(0,1)}, R2 = {(2,3)}."""
    mask = np.zeros((3, 4), dtype=np.uint8)
    mask[0, 0] = mask[0, 1] = mask[2, 3] = 1
    scores = np.zeros((3, 4))
    scores[2, 3] = 0.9
    scores[0, 0], scores[0, 1] = 0.7, 0.5
    negatives = [(i, j) for i in range(3) for j in range(4) if not mask[i, j]]
    for (i, j), v in zip(negatives, NEGATIVE_SCORES, strict=True):
        scores[i, j] = v
    return mask, scores


def slow_aupro(masks: list[np.ndarray], maps: list[np.ndarray], limit: float = 0.3) -> float:
    """Every distinct threshold, overlaps and FPR computed directly, trapezoid + interpolation."""
    regions = []  # (image index, boolean region mask)
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m > 0, structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    n_neg = sum(int((m == 0).sum()) for m in masks)
    points = [(0.0, 0.0)]
    for t in sorted({float(v) for s in maps for v in s.ravel()}, reverse=True):
        fp = sum(int(((s >= t) & (m == 0)).sum()) for m, s in zip(masks, maps, strict=True))
        overlaps = [((maps[i] >= t) & r).sum() / r.sum() for i, r in regions]
        points.append((min(fp / n_neg, 1.0), min(float(np.mean(overlaps)), 1.0)))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / limit


def random_case(rng: np.random.Generator, n_images: int, size: int, levels: int):
    """Blobby masks (some images normal) and scores quantised to ``levels`` values (ties)."""
    masks, maps = [], []
    for i in range(n_images):
        if i % 3 == 2:
            m = np.zeros((size, size), dtype=np.uint8)
        else:
            m = (ndimage.uniform_filter(rng.random((size, size)), 3) > 0.62).astype(np.uint8)
        s = np.round((0.6 * m + rng.random((size, size))) * levels) / levels
        masks.append(m)
        maps.append(s)
    return masks, maps


def test_worked_example_aupro() -> None:
    mask, scores = worked_example()
    assert aupro([mask], [scores]) == pytest.approx(0.21666666 / 0.3, abs=1e-6)
    assert aupro([mask], [scores]) == pytest.approx(0.7222, abs=1e-4)


def test_worked_example_pixel_auroc() -> None:
    mask, scores = worked_example()
    assert pixel_auroc([mask], [scores]) == pytest.approx(24 / 27)


def test_worked_example_200_threshold_approximation_is_not_aupro() -> None:
    mask, scores = worked_example()
    assert pro_200_thresholds([mask], [scores]) == pytest.approx(0.625)


@pytest.mark.parametrize("seed", range(6))
def test_aupro_matches_slow_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks, maps = random_case(rng, n_images=4, size=9, levels=[4, 7, 15, 1000][seed % 4])
    assert aupro(masks, maps) == pytest.approx(slow_aupro(masks, maps), abs=1e-9)
    for limit in (0.05, 0.5, 1.0):
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(
            slow_aupro(masks, maps, limit), abs=1e-9
        )


def slow_pro_200(masks: list[np.ndarray], maps: list[np.ndarray], limit: float = 0.3) -> float:
    """The loop as written in the AnomalyCLIP / anomalib-v0 repositories (cal_pro_score)."""
    amaps, gts = np.stack(maps), np.stack(masks) > 0
    lo, hi = amaps.min(), amaps.max()
    pros, fprs = [], []
    for th in lo + (hi - lo) / 200 * np.arange(200):
        binary = amaps > th
        overlaps = []
        for b, m in zip(binary, gts, strict=True):
            lab, n = ndimage.label(m, structure=np.ones((3, 3)))
            overlaps += [b[lab == k].mean() for k in range(1, n + 1)]
        pros.append(np.mean(overlaps))
        fprs.append((binary & ~gts).sum() / (~gts).sum())
    pros_a, fprs_a = np.array(pros), np.array(fprs)
    keep = fprs_a < limit
    f = fprs_a[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return float(abs(np.trapezoid(pros_a[keep], f)))


def test_pro_200_thresholds_matches_loop_reference() -> None:
    masks, maps = random_case(np.random.default_rng(11), n_images=3, size=12, levels=1000)
    assert pro_200_thresholds(masks, maps) == pytest.approx(slow_pro_200(masks, maps), abs=1e-9)


def test_aupro_0_255_mask_equals_0_1_mask() -> None:
    masks, maps = random_case(np.random.default_rng(7), n_images=3, size=12, levels=10)
    masks255 = [m * 255 for m in masks]
    assert aupro(masks255, maps) == aupro(masks, maps)
    assert pixel_auroc(masks255, maps) == pixel_auroc(masks, maps)


def test_aupro_perfect_map_is_one() -> None:
    masks, _ = random_case(np.random.default_rng(3), n_images=3, size=16, levels=10)
    perfect = [m.astype(np.float32) for m in masks]
    assert aupro(masks, perfect) == pytest.approx(1.0)
    assert pixel_auroc(masks, perfect) == pytest.approx(1.0)


def test_aupro_no_regions_is_nan_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    masks = [np.zeros((4, 4), dtype=np.uint8)]
    with caplog.at_level("WARNING"):
        assert np.isnan(aupro(masks, [np.random.default_rng(0).random((4, 4))]))
    assert "no ground-truth regions" in caplog.text


def test_aupro_uses_8_connectivity() -> None:
    # (1,1)-(1,2) and (2,3) touch only diagonally: one region of 3 pixels (8-connected), so
    # detecting (2,3) alone gives PRO 1/3 (4-connectivity would give mean(0, 1) = 0.5).
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[1, 1] = mask[1, 2] = mask[2, 3] = 1
    scores = np.zeros((4, 4))
    scores[2, 3] = 1.0
    # curve (0,0) (0,1/3) (1,1): PRO at FPR 0.3 is 1/3 + 2/3 * 0.3
    expected = 0.5 * (1 / 3 + 1 / 3 + 2 / 3 * 0.3)
    assert aupro([mask], [scores]) == pytest.approx(expected)


def test_pixel_shape_mismatch_names_index_and_shapes() -> None:
    masks = [np.zeros((4, 4)), np.zeros((4, 4))]
    maps = [np.zeros((4, 4)), np.zeros((4, 5))]
    with pytest.raises(ValueError, match=r"image 1.*\(4, 4\).*\(4, 5\)"):
        pixel_auroc(masks, maps)
    with pytest.raises(ValueError, match="image 1"):
        aupro(masks, maps)


@pytest.mark.parametrize("levels", [5, 1000])
def test_pixel_auroc_and_ap_equal_sklearn(levels: int) -> None:
    masks, maps = random_case(np.random.default_rng(levels), n_images=5, size=10, levels=levels)
    y = np.concatenate([m.ravel() > 0 for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_image_metrics_equal_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.3 * labels, 2)  # ties
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert image_auroc(labels.astype(bool).tolist(), scores.tolist()) == pytest.approx(
        roc_auc_score(labels, scores)
    )
    assert image_ap(labels, scores) == pytest.approx(average_precision_score(labels, scores))
    p, r, _ = precision_recall_curve(labels, scores)
    best = max(2 * pi * ri / (pi + ri) for pi, ri in zip(p, r, strict=True) if pi + ri > 0)
    assert image_f1_max(labels, scores) == pytest.approx(best)


def test_image_f1_max_perfect_separation() -> None:
    assert image_f1_max([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0


def test_image_auroc_one_class_raises() -> None:
    with pytest.raises(ValueError, match="only one class"):
        image_auroc([1, 1, 1], [0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="differ in length"):
        image_auroc([0, 1], [0.1])


def test_worked_example_pro_curve_points() -> None:
    # Descending: R2 0.9 (PRO 1/2), neg 0.8 (FPR 1/9), R1 0.7 (PRO 3/4), neg 0.6 (FPR 2/9),
    # R1 0.5 (PRO 1), then the negative 0.40 takes FPR past 0.3 (3/9): PRO 1 at 0.3.
    mask, scores = worked_example()
    fpr, pro = pro_curve([mask], [scores])
    expected = [
        (0, 0), (0, 0), (0, 0.5), (1 / 9, 0.5), (1 / 9, 0.75), (2 / 9, 0.75), (2 / 9, 1.0),
        (0.3, 1.0),
    ]  # fmt: skip
    np.testing.assert_allclose(np.c_[fpr, pro], expected, atol=1e-12)
    assert np.trapezoid(pro, fpr) / 0.3 == pytest.approx(aupro([mask], [scores]))


def test_pro_curve_undefined_is_none_and_limit_checked() -> None:
    assert pro_curve([np.zeros((3, 3))], [np.zeros((3, 3))]) is None
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_curve([np.ones((3, 3))], [np.zeros((3, 3))], fpr_limit=0.0)


def test_image_curves_hand_example() -> None:
    # labels 0 0 1 1, scores 0.1 0.6 0.4 0.9: thresholds 0.9, 0.6, 0.4, 0.1
    fpr, tpr = image_roc_curve([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(image_auroc([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9]))
    recall, precision = image_pr_curve([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    np.testing.assert_allclose(recall, [1, 1, 0.5, 0.5, 0])
    np.testing.assert_allclose(precision, [0.5, 2 / 3, 0.5, 1, 1])
