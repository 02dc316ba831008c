"""The defect-type head (training.type_head, models.type_head): fitted on the training classes'
typed defect images, it names what is inside a mask, abstains below the probability chosen on
held-out classes, travels with the checkpoint and grounds the predictor's answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.models import SMALL_CFG, tiny_tokenizer
from PIL import Image

from vmad_pipeline.configs.train import TypeHeadConfig
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.type_head import NoveltyGate, TypeHead
from vmad_pipeline.prompts import a_defect
from vmad_pipeline.training.type_head import (
    choose_min_probability,
    choose_thresholds,
    fit_type_head,
    folded,
)


def _typed_corpus(tmp_path, classes=("a", "b", "c"), n=6):
    """Per class ``n`` defect images: "scratch" = a bright bar, "hole" = a dark square."""
    rows = []
    for ci, c in enumerate(classes):
        for i in range(n):
            rng = np.random.default_rng([ci, i])
            img = rng.integers(100, 140, (32, 32, 3), dtype=np.uint8)
            mask = np.zeros((32, 32), np.uint8)
            y, x = 4 + (i % 3) * 8, 4 + (i % 2) * 14
            kind = "scratch" if i % 2 else "hole"
            if kind == "scratch":
                img[y : y + 3, x : x + 12] = 250
                mask[y : y + 3, x : x + 12] = 255
            else:
                img[y : y + 7, x : x + 7] = 5
                mask[y : y + 7, x : x + 7] = 255
            Image.fromarray(img).save(tmp_path / f"{c}{i}.png")
            Image.fromarray(mask).save(tmp_path / f"{c}{i}_m.png")
            rows.append(
                {
                    "source": "s",
                    "category": c,
                    "image_path": f"{c}{i}.png",
                    "mask_path": f"{c}{i}_m.png",
                    "label": 1,
                    "defect_type": kind,
                }
            )
    return pd.DataFrame(rows), {"s": str(tmp_path)}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("types")
    rows, roots = _typed_corpus(tmp)
    torch.manual_seed(0)
    model = build_vmad(SMALL_CFG, tiny_tokenizer(), train_classes=["a", "b", "c"]).eval()
    cfg = TypeHeadConfig(grid=4, input_size=64)
    return model, fit_type_head(model, rows, roots, cfg), rows, roots


def test_the_head_names_what_is_inside_the_mask(fitted):
    model, head, rows, roots = fitted
    assert head.types == ["hole", "scratch"] and head.meta["n_images"] == 18
    held = head.meta["held_out_classes"]
    assert held["n_images"] == 18 and held["precision"] >= 0.85  # the two kinds differ plainly
    from vmad_pipeline.datasets.manifest import row_files
    from vmad_pipeline.images import load_batch

    images, masks = load_batch(*row_files(rows, roots), 32)
    desc = head.descriptors(model.vision, images.float() / 255, (masks > 0).float())
    named, prob = head.classify(desc)
    right = [n == t for n, t in zip(named, rows["defect_type"], strict=True) if n is not None]
    assert len(right) >= 12 and np.mean(right) >= 0.9
    back = TypeHead.from_json(head.to_json())
    assert back == head and TypeHead.from_json(None) is None


def test_it_abstains_below_the_chosen_probability():
    head = TypeHead(["hole", "scratch"], [[1.0], [-1.0]], [0.0, 0.0], 0.8, [1], 4, None)
    named, prob = head.classify(np.array([[3.0], [0.1], [-3.0]]))
    assert named == ["hole", None, "scratch"] and prob[1] < 0.8 < prob[0]
    assert head.classify(np.array([[0.1]]), abstain=False)[0] == ["hole"]  # the probe names all


def test_the_threshold_is_the_lowest_reaching_the_target_precision():
    names = np.array(["a", "a", "b", "b"], object)
    truth = np.array(["a", "b", "b", "b"], object)
    probs = np.array([0.9, 0.4, 0.8, 0.5])
    chosen, figures = choose_min_probability(names, probs, truth, 0.85)
    assert chosen == 0.45 and figures["precision"] == 1.0 and figures["named_share"] == 0.75
    # never reached: the most precise one, said so by its figures
    chosen, figures = choose_min_probability(names, probs, np.array(["b"] * 4, object), 0.99)
    assert figures["precision"] < 0.99
    # held-out types whose defects the head must leave unnamed: 0.45 names 2 of their 3
    novel = np.array([0.5, 0.6, 0.7])
    chosen, figures = choose_min_probability(names, probs, truth, 0.85, novel, 0.6)
    assert chosen == 0.65 and figures["new_type_abstention"] == pytest.approx(2 / 3, abs=1e-3)
    assert figures["precision"] == 1.0 and figures["named_share"] == 0.5
    # never both: the highest candidate, naming least
    chosen, _ = choose_min_probability(names, probs, truth, 0.85, np.array([0.99]), 1.0)
    assert chosen == 0.95


def test_the_novelty_gate_names_regions_drawn_against_references_by_its_own_rule():
    """A probability says which trained type a region is most like, not that it is like any.
    Ungated (zero-shot), a type is named at min_probability alone; gated (drawn against
    references), at the gate's lower probability unless the region is far from both types."""
    gate = NoveltyGate([0.0, 0.0], [1.0, 1.0], [[0.0, 0.0], [4.0, 0.0]], [1.0, 1.0], 2.0, 0.6)
    near, mid, far = [3.9, 0.1], [0.5, 0.0], [2.0, 9.0]  # P(b): 0.9996, 0.731, 0.982
    regions = np.array([near, mid, far])
    assert gate.novelty(regions[:1])[0] == pytest.approx(0.01)
    assert gate.novelty(regions[2:])[0] == 42.5
    head = TypeHead(
        types=["a", "b"],
        coef=[[-1.0, 0.0], [1.0, 0.0]],
        intercept=[0.0, 0.0],
        min_probability=0.95,
        levels=[1],
        grid=1,
        input_size=None,
        gate=gate,
    )
    assert head.classify(regions)[0] == ["b", None, "b"]
    assert head.classify(regions, gated=[True] * 3)[0] == ["b", "b", None]
    assert head.classify(regions, gated=[True, False, False])[0] == ["b", None, "b"]
    assert head.classify(regions, abstain=False, gated=[True] * 3)[0] == ["b"] * 3
    again = TypeHead.from_json(head.to_json())
    assert again == head and isinstance(again.gate, NoveltyGate)
    before = {k: v for k, v in head.to_json().items() if k != "gate"}  # a head without a gate
    assert TypeHead.from_json(before).gate is None
    assert TypeHead.from_json(before).classify(regions, gated=[True] * 3)[0] == ["b", None, "b"]


def test_the_gate_is_chosen_with_the_probability_on_held_out_images():
    """Probability alone cannot leave the held-out types unnamed without naming nothing; the
    gate, chosen on the same held-out images, leaves them and the one wrong name out."""
    names = np.array(["a", "a", "b", "b"], object)
    truth = np.array(["a", "a", "b", "a"], object)
    probs, far = np.full(4, 0.9), np.array([0.1, 0.2, 0.3, 5.0])
    novel, novel_far = np.array([0.9, 0.9]), np.array([6.0, 7.0])
    alone, cut, figures = choose_thresholds(names, probs, truth, None, 0.85, novel, None, 0.8)
    assert alone == 0.95 and cut is None and figures["named_share"] == 0.0
    chosen, cut, figures = choose_thresholds(names, probs, truth, far, 0.85, novel, novel_far, 0.8)
    assert chosen == 0.3 and 0.3 <= cut < 5.0 and figures["max_novelty"] == round(cut, 4)
    assert figures["accuracy"] == 0.75 and figures["precision"] == 1.0
    assert figures["new_type_abstention"] == 1.0


def test_without_the_gate_the_head_has_none(tmp_path, fitted):
    model = fitted[0]
    rows, roots = _typed_corpus(tmp_path)
    head = fit_type_head(
        model, rows, roots, TypeHeadConfig(grid=4, input_size=64, novelty_gate=False)
    )
    assert head.gate is None and head.meta["held_out_classes_gated"] is None


def test_one_type_gives_no_head_and_bad_levels_are_named(tmp_path, fitted):
    model = fitted[0]
    rows, roots = _typed_corpus(tmp_path)
    one = rows.assign(defect_type="hole")
    assert fit_type_head(model, one, roots, TypeHeadConfig(grid=4)) is None
    with pytest.raises(ValueError, match=r"type head levels \[9\]"):
        fit_type_head(model, rows, roots, TypeHeadConfig(levels=(1, 9), grid=4))


def test_the_head_travels_with_the_checkpoint_and_grounds_the_answers(
    fitted, tmp_path, monkeypatch
):
    from vmad_pipeline.configs import WeightsConfig
    from vmad_pipeline.configs.evaluate import parse_evaluate_params
    from vmad_pipeline.inference.service import Detector
    from vmad_pipeline.models.checkpoint import Checkpoint, save_checkpoint

    model, head, rows, roots = fitted
    model.type_head = head.to_json()
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "ck")
    cfg = parse_evaluate_params({"max_new_tokens": 3, "progress": False})
    detector = Detector.from_checkpoint(Checkpoint(tmp_path / "ck"), WeightsConfig(), cfg)
    assert detector.predictor.type_head == head
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    p = detector.predictor
    pred = p.predict(images, ["a", "b"], output_size=16)
    assert len(pred.drawn_locations) == 2  # an untrained model's words name no defect
    assert pred.named_types == [False, False] and pred.answers == p._text(pred.answer_ids)
    said = "Yes. There is a crack at the top right."  # as a trained model's would
    monkeypatch.setattr(p, "_text", lambda ids: [said] * len(ids))
    pred = p.predict(images, ["a", "b"], output_size=16)
    assert all(t is None or t in head.types for t in pred.named_types)
    for answer, where, what in zip(
        pred.answers, pred.drawn_locations, pred.named_types, strict=True
    ):
        name = "an anomaly" if what is None else a_defect(what)
        assert answer == f"Yes. There is {name} at the {where}."
    off = parse_evaluate_params({"max_new_tokens": 3, "progress": False, "ground_words": False})
    plain = Detector.from_checkpoint(Checkpoint(tmp_path / "ck"), WeightsConfig(), off)
    assert plain.predictor.predict(images, ["a", "b"], output_size=16).named_types is None


def test_the_standardisation_is_folded_into_the_stored_coefficients():
    """The head stores one linear map on the raw descriptors: its logits are the fitted
    standardise-then-classify pipeline's, to rounding."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(5.0, [0.1, 10.0, 1.0, 3.0], (60, 4))
    y = np.array(["a", "b", "c"] * 20, object)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced"))
    pipe.fit(x, y)
    coef, intercept = folded(pipe)
    np.testing.assert_allclose(x @ coef.T + intercept, pipe.decision_function(x), atol=1e-9)
