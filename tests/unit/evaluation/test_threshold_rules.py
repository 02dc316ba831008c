"""Decision thresholds from a validation set (the rules), and where a prediction takes its
thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.configs.train import CalibrationConfig
from vmad_pipeline.evaluation.threshold_rules import decision_metrics, pixel_threshold, threshold
from vmad_pipeline.inference.service import decision_thresholds as thresholds


def test_fpr_threshold_passes_at_most_that_share_of_normal_images():
    normal = np.linspace(0.0, 0.9, 40)  # 40 normal scores
    labels = np.r_[np.zeros(40), np.ones(3)]
    scores = np.r_[normal, [0.95, 0.2, 0.99]]
    t = threshold("fpr@0.05", labels, scores)
    assert (normal >= t).sum() == 2  # floor(0.05 x 40)
    assert threshold("fpr@0.01", labels, scores) > normal.max()  # none may pass


def test_f1_threshold_is_the_best_cut():
    labels = np.array([0, 0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.85, 0.95])
    t = threshold("f1", labels, scores)
    best = max(decision_metrics(labels, scores, s)["f1"] for s in scores)
    assert decision_metrics(labels, scores, t)["f1"] == best
    with pytest.raises(ValueError, match="normal and anomalous"):
        threshold("f1", np.zeros(3), np.ones(3))


def test_pixel_threshold_over_every_pixel():
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = 0.9
    t = pixel_threshold("fpr@0.05", maps, np.zeros((2, 4, 4)))
    assert 0.0 < t <= 0.9 and (maps >= t).sum() == 1  # floor(0.05 x 32) = 1 pixel


def test_decision_metrics_count_by_hand():
    m = decision_metrics([1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.7], at=0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)


def test_rules_are_checked_and_thresholds_belong_to_their_score():
    with pytest.raises(ConfigError, match="fpr@"):
        CalibrationConfig(image="fpr@5")
    decision = {"calibrated": True, "score_source": "fused", "image_threshold": 0.7}
    decision |= {"pixel_threshold": 0.4, "image_rule": "fpr@0.05", "pixel_rule": "fpr@0.05"}
    chosen = thresholds(decision, "fused")
    assert chosen["image_threshold"] == 0.7 and chosen["image_from"] == "calibrated: fpr@0.05"
    assert thresholds(decision, "fused", image=0.2)["image_from"] == "parameter"
    with pytest.raises(ValueError, match="calibrated on score_source 'fused'"):
        thresholds(decision, "map_max")
    assert thresholds({}, "map_max")["image_threshold"] == 0.5  # uncalibrated: 0.5


def test_a_fixed_rule_keeps_its_value_and_a_degenerate_pixel_threshold_is_named(caplog):
    """The default run once calibrated its pixel threshold on normal pixels only to 2.4e-7
    (the maps are ~0 there), so every mask of an unseen class covered the whole image: the
    default is now fixed@0.5 (the mask loss's own boundary), and an fpr rule that lands that
    low says so."""
    assert threshold("fixed@0.5", [0, 1], [0.1, 0.9]) == 0.5
    assert pixel_threshold("fixed@0.3", np.zeros((1, 2, 2)), np.zeros((1, 2, 2))) == 0.3
    assert CalibrationConfig().pixel == "fixed@0.5"
    for bad in ("fixed@", "fixed@1.5", "fixed@x"):
        with pytest.raises(ConfigError, match="fixed@"):
            CalibrationConfig(pixel=bad)
    from vmad_pipeline.training.calibration import warn_if_degenerate

    warn_if_degenerate(2.4e-7, "fpr@0.05")
    assert "pixel threshold 2.4e-07" in caplog.text and "whole image" in caplog.text
    caplog.clear()
    warn_if_degenerate(0.3, "fpr@0.05")
    assert not caplog.text
