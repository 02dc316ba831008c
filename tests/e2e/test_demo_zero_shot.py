"""The web demo's decision, zero-shot (``apps.demo.decision_text``): it says when the image
repeats itself everywhere and its score was scaled down (docs/references.md, "The zero-shot
decision")."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers.models import cue_detector
from PIL import Image

from vmad_pipeline.apps import demo
from vmad_pipeline.configs.model import SelfComparisonConfig

pytestmark = pytest.mark.usefixtures("gradio_cache")


def test_zero_shot_the_decision_says_when_the_image_repeats_itself(tmp_path, monkeypatch):
    """No place of the image unlike the rest of it (a scale nothing reaches): the decision
    says its score was scaled down; with a scale every place reaches, it does not."""
    detector = cue_detector()
    path = tmp_path / "part.png"
    pixels = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    model = detector.predictor.model
    for scale, said in ((1e6, True), (1e-6, False)):
        own = SelfComparisonConfig(
            enabled=True, stride=8, radius=1, scale=scale, repeated_score=0.5
        )
        monkeypatch.setattr(model, "config", dataclasses.replace(model.config, self_comparison=own))
        _, decision, *_ = demo.on_inspect(detector, str(path), "screw", None)
        assert ("unlike the rest of it" in decision) is said, decision
