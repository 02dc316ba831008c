"""Zero-shot, the decision and the answer: an image whose every place repeats elsewhere in it has
its score multiplied by ``self_comparison.repeated_score`` (``models.self_comparison``), and the
answer's Yes / No says the decision at the detector's threshold, as it does with references."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers.models import cue_detector, random_images

from vmad_pipeline.configs.model import SelfComparisonConfig
from vmad_pipeline.inference.serving import response


@pytest.fixture(scope="module")
def detector():
    return cue_detector()


def _comparing(detector, monkeypatch, **settings):
    own = SelfComparisonConfig(enabled=True, stride=8, radius=1, **settings)
    model = detector.predictor.model
    monkeypatch.setattr(model, "config", dataclasses.replace(model.config, self_comparison=own))


def test_an_image_with_nothing_unlike_the_rest_scores_less(detector, monkeypatch):
    """No place reaches the scale: the zero-shot score is repeated_score times the one with every
    place kept; an image with references keeps its score whole."""
    p = detector.predictor
    images, cats = random_images(3), ["screw"] * 3
    feats = p.reference_features(random_images(2, seed=3))
    memories = [None, feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]), None]
    _comparing(detector, monkeypatch, scale=1e-6, repeated_score=0.25)  # every place reaches it
    whole = p.predict(images, cats, output_size=16, references=memories)
    _comparing(detector, monkeypatch, scale=1e6, repeated_score=0.25)  # none does
    down = p.predict(images, cats, output_size=16, references=memories)
    # the maps differ (factors 1 and ~0): the score's factor is read from the comparison alone
    assert down.map_max[0] < whole.map_max[0]
    np.testing.assert_allclose(down.scores[1], whole.scores[1], rtol=1e-5)
    kept = p.predict(images, cats, output_size=16, references=memories)
    _comparing(detector, monkeypatch, scale=1e6, repeated_score=1.0)
    same = p.predict(images, cats, output_size=16, references=memories)
    np.testing.assert_allclose(kept.scores[[0, 2]], 0.25 * same.scores[[0, 2]], rtol=1e-5)


def test_the_zero_shot_answer_says_the_decision(detector, monkeypatch):
    """With no references the answer's Yes / No follows score >= the detector's threshold, so
    that the answer and the decision never disagree."""
    _comparing(detector, monkeypatch, scale=1e6, repeated_score=0.5)
    p = detector.predictor
    y, k = p.yes_no, len(p.yes_no.prefix)
    pictures = [im.permute(1, 2, 0).numpy() for im in random_images(4, seed=7)]
    for cut, word in ((0.0, y.yes), (1.01, y.no)):
        monkeypatch.setattr(detector, "image_threshold", cut)
        seen = detector.inspect(pictures, ["screw"] * 4)
        assert all(s.anomalous == (word == y.yes) for s in seen)
        assert [s.answer_ids[k] for s in seen] == [word] * 4
        assert all(s.repeats_itself for s in seen)  # said where a score was scaled down
    # with references but no references-only threshold (batch mode), the LLM's word stands
    feats = p.reference_features(random_images(2, seed=3))
    memory = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    words = []
    for cut in (0.0, 1.01):
        monkeypatch.setattr(detector, "image_threshold", cut)
        seen = detector.inspect(pictures, ["screw"] * 4, memories=[memory] * 4)
        words.append([s.answer_ids[k] for s in seen])
    assert words[0] == words[1]
    assert not any(s.repeats_itself for s in seen)  # with references, never
    assert response(seen)["repeats_itself"].tolist() == [False] * 4
    _comparing(detector, monkeypatch, scale=1e-6, repeated_score=0.5)
    seen = detector.inspect(pictures, ["screw"] * 4)
    assert response(seen)["repeats_itself"].tolist() == [False] * 4
