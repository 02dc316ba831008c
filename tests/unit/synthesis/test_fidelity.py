"""Fidelity statistics against hand-computed cases and naive twins."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vmad_pipeline.synthesis.fidelity import auroc, kid, mask_box, psnr_outside, realism


def test_psnr_outside_the_mask_by_hand():
    base = np.zeros((4, 4, 3), np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[:2] = 1
    gen = base.copy()
    gen[:2] = 200  # inside: ignored
    assert psnr_outside(gen, base, mask, cap=100.0) == 100.0  # bit-exact outside: the cap
    gen[2:] = 10  # outside: every value off by 10 -> MSE 100
    assert psnr_outside(gen, base, mask, cap=100.0) == pytest.approx(10 * math.log10(255**2 / 100))
    assert psnr_outside(gen, base, np.ones((4, 4)), cap=60.0) == 60.0  # nothing outside


def _kid_naive(x, y):
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_the_naive_sum():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(1.0, size=(4, 3))
    assert kid(x, y) == pytest.approx(_kid_naive(x, y))
    # a worked case: d = 1, x = {0, 1}, y = {0, 2}: k = (ab + 1)^3
    # xx = 2 k(0,1) / 2 = 1; yy = 1; xy = (1 + 1 + 1 + 27) / 4 = 7.5 -> 1 + 1 - 15 = -13
    assert kid(np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])) == pytest.approx(-13.0)
    with pytest.raises(ValueError, match="at least 2"):
        kid(x[:1], y)


def test_realism_separates_shifted_features_and_reports_references():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 8))
    out = realism(rng.normal(size=(20, 8)), real, rng.normal(3.0, size=(20, 8)))
    assert out["kid_unpainted"] > 10 * abs(out["kid_generated"])
    assert abs(out["kid_real_halves"]) < out["kid_unpainted"]
    assert realism(real[:1], real, real[:1])["kid_generated"] is None


def test_mask_box_grows_and_stays_inside():
    mask = np.zeros((32, 32), np.uint8)
    mask[10:14, 12:20] = 1  # 4 x 8 box
    # side 8 -> 16; centre (11.5, 15.5) -> top round(3.5) = 4, left round(7.5) = 8
    assert mask_box(mask, 0.5) == (4, 8, 16, 16)
    mask[:] = 0
    mask[0:2, 30:32] = 1
    top, left, h, w = mask_box(mask, 1.0)
    assert top == 0 and left + w == 32 and h == w == 6
    assert mask_box(np.zeros((8, 8)), 0.5) == (0, 0, 8, 8)


def test_auroc_by_hand():
    assert auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auroc(np.array([0.1, 0.4]), np.array([0.3])) == 0.5
    assert auroc(np.array([]), np.array([0.3])) is None


def test_features_on_the_sphere_make_kid_blind_to_the_activation_scale():
    from vmad_pipeline.synthesis.fidelity import on_sphere

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 16)), rng.normal(loc=0.3, size=(10, 16))
    sx = on_sphere(x)
    assert np.allclose((sx * sx).sum(1), 16)  # length sqrt(d): x.y / d is the cosine
    # raw activations 50x larger give the same statistic once on the sphere
    assert kid(on_sphere(50 * x), on_sphere(50 * y)) == pytest.approx(kid(sx, on_sphere(y)))
    # and without it, the scale dominates (the failure measured before on_sphere)
    assert abs(kid(50 * x, 50 * y)) > 1000 * abs(kid(sx, on_sphere(y)))
