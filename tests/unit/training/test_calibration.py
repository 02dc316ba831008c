"""The decision thresholds calibrated with a model (training/calibration.py)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from helpers.models import cue_detector, random_images
from PIL import Image

from vmad_pipeline.configs.model import SelfComparisonConfig
from vmad_pipeline.configs.train import CalibrationConfig
from vmad_pipeline.training.calibration import calibrate


def test_the_threshold_is_chosen_without_the_zero_shot_factor(tmp_path, monkeypatch):
    """Normal images that repeat themselves everywhere: the image threshold is the same whatever
    the factor their scores are multiplied by (it acts above the threshold, and scores with
    references, which never carry it, take that threshold as their floor); the decision at it
    is the factored scores'."""
    rows = []
    for i, image in enumerate(random_images(6, seed=11)):
        path = tmp_path / "screw" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        row = {"source": "s", "image_path": f"screw/{i}.png", "mask_path": "", "label": 0}
        rows.append(row | {"category": "screw"})
    rows, roots = pd.DataFrame(rows), {"s": str(tmp_path)}
    p = cue_detector().predictor
    rule = CalibrationConfig(image="fpr@0.5")
    out = {}
    for factor in (1.0, 0.25):
        own = SelfComparisonConfig(
            enabled=True, stride=8, radius=1, scale=1e6, repeated_score=factor
        )
        monkeypatch.setattr(
            p.model, "config", dataclasses.replace(p.model.config, self_comparison=own)
        )
        out[factor] = calibrate(p, rows, roots, rule)
    assert out[0.25]["image_threshold"] == pytest.approx(out[1.0]["image_threshold"], rel=1e-6)
    flagged = {f: d["at_threshold"]["fp"] for f, d in out.items()}
    assert flagged[1.0] >= 3 and flagged[0.25] == 0  # every score a quarter: none reaches it
