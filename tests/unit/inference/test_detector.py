"""One detector for every entry point (``inference.service.Detector.for_model``): predict, the
registered model (pyfunc / REST), the evaluation, the defect generator's detector table and
calibration build it by the one factory, so one image gets one score, one rule and one pair of
thresholds everywhere (the chat and the demo load theirs through ``apps.project``, checked
end to end in ``tests/e2e/test_pipelines.py``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO
from helpers.models import CFG, tiny_tokenizer
from PIL import Image

from vmad_pipeline.configs.evaluate import (
    EvaluateConfig,
    ScoreRule,
    from_model_config,
    parse_evaluate_params,
)
from vmad_pipeline.inference.service import Detector
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.checkpoint import Checkpoint, save_checkpoint

EVALUATE = {
    "score_rule": {"source": "fused", "fusion_weight": 0.3},
    "max_new_tokens": 5,
    "progress": False,
    "follow_ups": False,
    "hierarchy": {"enabled": False},
}
DECISION = {
    "calibrated": True,
    "score_source": "fused",
    "image_threshold": 0.37,
    "pixel_threshold": 0.42,
    "image_rule": "fpr@0.05",
    "pixel_rule": "fixed@0.42",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Checkpoint:
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = build_vmad(CFG, tok)
    model.decision = dict(DECISION)
    path = tmp_path_factory.mktemp("detector") / "ckpt"
    save_checkpoint(model, tok, path)
    return Checkpoint(path)


@pytest.fixture
def built(monkeypatch) -> list[Detector]:
    """Every detector the factory builds during a test."""
    found: list[Detector] = []
    factory = Detector.for_model.__func__

    def spy(cls, *args, **kwargs):
        found.append(factory(cls, *args, **kwargs))
        return found[-1]

    monkeypatch.setattr(Detector, "for_model", classmethod(spy))
    return found


def _image(path) -> np.ndarray:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return image


def test_every_entry_point_scores_one_image_by_one_rule_and_thresholds(checkpoint, built, tmp_path):
    from vmad_pipeline.inference.store import PredictionStore
    from vmad_pipeline.io.pyfunc import VmadPyfunc
    from vmad_pipeline.pipelines.evaluate.nodes import load_detector
    from vmad_pipeline.pipelines.predict.nodes import predict_images

    image = _image(tmp_path / "in" / "pcb" / "000.png")
    taxonomy = yaml.safe_load((REPO / "conf/base/taxonomy.yml").read_text())
    predict = {"input": str(tmp_path / "in"), "progress": False, "device": "cpu"}
    store = PredictionStore(tmp_path / "out")
    predict_images(checkpoint, store, taxonomy, predict, EVALUATE, {})
    load_detector(checkpoint, {}, EVALUATE, pd.DataFrame())
    served = VmadPyfunc()
    config = parse_evaluate_params(EVALUATE).model_config()  # as the model is registered
    served.load_context(
        SimpleNamespace(model_config=config, artifacts={"checkpoint": str(checkpoint.path)})
    )
    assert len(built) == 3 and served.detector is built[-1]
    for detector in built:
        assert detector.predictor.rule == ScoreRule(source="fused", fusion_weight=0.3)
        assert detector.predictor.max_new_tokens == 5
        assert (detector.image_threshold, detector.pixel_threshold) == (0.37, 0.42)
        assert detector.thresholds["image_from"] == "calibrated: fpr@0.05"
    scores = [d.inspect([image], ["pcb"])[0].score for d in built]
    assert scores == pytest.approx([scores[0]] * 3, abs=1e-6)
    (line,) = store.records()  # what predict wrote for the image
    assert line["score"] == pytest.approx(scores[0], abs=1e-6)
    assert line["anomalous"] == (scores[0] >= 0.37)


def test_a_threshold_of_another_score_is_refused_except_by_the_evaluation(checkpoint, built):
    other = {**EVALUATE, "score_rule": {"source": "map_max"}}
    cfg = parse_evaluate_params(other)
    with pytest.raises(ValueError, match="calibrated on score_source 'fused'"):
        Detector.from_checkpoint(checkpoint, None, cfg)
    detector = Detector.from_checkpoint(checkpoint, None, cfg, image_threshold=0.9)
    assert detector.image_threshold == 0.9 and detector.thresholds["image_from"] == "parameter"
    scored_only = Detector.from_checkpoint(checkpoint, None, cfg, strict=False)
    assert scored_only.thresholds == {}  # the evaluation reports no decision section


def test_the_registered_model_config_round_trips_the_score_rule():
    cfg = EvaluateConfig(score_rule=ScoreRule(source="p_yes", fusion_weight=0.2), max_new_tokens=7)
    back = from_model_config({**cfg.model_config(), "weights": {}, "max_rows": 3})
    assert back.score_rule == cfg.score_rule and back.max_new_tokens == 7
    assert from_model_config(None).score_rule == ScoreRule()
