"""Evaluation with k normal references (evaluation/shots.py): where references come from (never
a test image), how they are drawn, the references-only threshold and the decision."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.configs.evaluate import ReferencesConfig, parse_evaluate_params
from vmad_pipeline.evaluation.shots import (
    class_features,
    draw_references,
    reference_pool,
    references_threshold,
    shot_decision,
    shot_maps,
    shot_report,
)


def _rows(classes=("a", "b"), n_train=6, n_test=4) -> pd.DataFrame:
    rows = []
    for c in classes:
        for i in range(n_train):
            rows.append((c, "train", 0, f"{c}/train/good/{i:03d}.png", f"{c}-train-{i}"))
        for i in range(n_test):
            label = i % 2
            sub = "bad" if label else "good"
            rows.append((c, "test", label, f"{c}/test/{sub}/{i:03d}.png", f"{c}-test-{i}"))
    cols = ["category", "split", "label", "image_path", "sha256"]
    return pd.DataFrame(rows, columns=cols).assign(source="src", mask_path=None)


def test_references_are_never_test_images():
    rows = _rows()
    eval_set = rows[rows["split"] == "test"].reset_index(drop=True)
    # a training image whose content equals a test image's (a copy) is not a reference either
    rows.loc[(rows["category"] == "a") & (rows["split"] == "train"), "sha256"] = [
        "a-test-0",
        *[f"x{i}" for i in range(5)],
    ]
    pool = reference_pool(rows, eval_set)
    assert not set(pool["image_path"]) & set(eval_set["image_path"])
    assert not set(pool["sha256"]) & set(eval_set["sha256"])
    assert (pool["split"] == "train").all() and (pool["label"] == 0).all()
    assert (pool["category"] == "a").sum() == 5 and (pool["category"] == "b").sum() == 6
    for k in (1, 4, 8):
        for drawn in draw_references(pool, k, seed=3).values():
            assert not set(drawn["image_path"]) & set(eval_set["image_path"])


def test_draws_are_seeded_nested_and_per_class(caplog):
    pool = reference_pool(_rows(n_train=10), _rows(n_train=10).query("split == 'test'"))
    one, four = draw_references(pool, 1, seed=0), draw_references(pool, 4, seed=0)
    again = draw_references(pool.sample(frac=1, random_state=1), 4, seed=0)  # shuffled input
    assert set(four) == {"a", "b"} and all(len(r) == 4 for r in four.values())
    for c in four:
        assert one[c]["image_path"][0] == four[c]["image_path"][0]  # k = 1 within k = 4
        assert list(again[c]["image_path"]) == list(four[c]["image_path"])
    other = draw_references(pool, 4, seed=1)
    assert any(list(other[c]["image_path"]) != list(four[c]["image_path"]) for c in four)
    many = draw_references(pool, 12, seed=0)
    assert len(many["a"]) == 10 and "fewer than k = 12" in caplog.text


def test_the_prediction_threshold_is_the_student_t_bound():
    from scipy.stats import t

    loo = np.array([0.2, 0.3, 0.25, 0.35])
    bound = loo.mean() + t.ppf(0.95, 3) * loo.std(ddof=1) * math.sqrt(1 + 1 / 4)
    assert references_threshold(loo, "prediction@0.95") == pytest.approx(bound)
    assert references_threshold(loo, "prediction@0.99") > bound
    assert references_threshold(loo, "loo_max") == 0.35
    assert references_threshold(np.array([0.3]), "prediction@0.95") is None  # one reference
    with pytest.raises(ConfigError, match="references.threshold"):
        parse_evaluate_params({"references": {"threshold": "prediction@1.5"}})
    with pytest.raises(ConfigError, match="shots"):
        parse_evaluate_params({"shots": [4, 4]})


def test_the_decision_uses_each_class_its_own_threshold():
    eval_set = pd.DataFrame({"category": ["a", "a", "b", "b", "c"], "label": [0, 1, 0, 1, 1]})
    scores = np.array([0.1, 0.5, 0.6, 0.9, 0.99])
    out = shot_decision(eval_set, scores, {"a": 0.3, "b": 0.7, "c": None})
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (2, 0, 2, 0)  # c has no threshold
    assert out["fpr"] == 0.0 and out["classes"] == 2
    assert shot_decision(eval_set, scores, {"a": None, "b": None, "c": None}) is None


class _Colour(torch.nn.Module):
    """4 levels; level l = the image's colour at grid 16 / 2^l (a patch's feature = its colour)."""

    def forward(self, x):
        return [F.adaptive_avg_pool2d(x, 16 // 2**level) for level in range(4)]


def test_an_image_like_its_references_scores_zero_and_a_new_mark_does_not():
    cfg = ReferencesConfig(image_size=32, levels=(0, 1), stride=4, blur_sigma=0.0)
    grey = torch.full((3, 3, 32, 32), 120, dtype=torch.uint8)
    marked = grey[:1].clone()
    marked[:, 0, 8:16, 8:16] = 250  # a red square the references never show
    images = torch.cat([grey[:1], marked])
    test = class_features(images, ["a", "a"], _Colour(), cfg)
    found = shot_maps(test, {"a": grey}, _Colour(), cfg, 32)
    assert found.maps[0].max() < 1e-5 and found.maps[1].max() > 0.1
    assert found.n_references == {"a": 3} and len(found.loo_scores["a"]) == 3
    assert found.thresholds["a"] == pytest.approx(0.0, abs=1e-5)  # identical references


def test_shot_report_on_a_tree(tmp_path):
    rows = _rows(classes=("a",), n_train=5, n_test=4)
    rng = np.random.default_rng(0)
    masks = []
    for r in rows.itertuples():
        image = np.full((32, 32, 3), 100, np.uint8) + rng.integers(0, 3, (32, 32, 3), np.uint8)
        mask = np.zeros((32, 32), bool)
        if r.label:
            image[4:12, 4:12] = 240
            mask[4:12, 4:12] = True
        (tmp_path / r.image_path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / r.image_path)
        if r.split == "test":
            masks.append(mask)
    eval_set = rows[rows["split"] == "test"].reset_index(drop=True)
    cfg = ReferencesConfig(image_size=32, levels=(0, 1), stride=4, blur_sigma=0.0)
    args = (eval_set, {"src": str(tmp_path)}, masks, reference_pool(rows, eval_set), (0, 1, 4))
    out, flat = shot_report(*args, 0, cfg, 32, 0.3, _Colour())
    assert set(out) == {"1", "4"}  # k = 0 is the model's top level, not the baseline's
    assert out["4"]["mean"]["image_auroc"] == 1.0 and out["4"]["n_references"] == {"a": 4}
    assert out["1"]["decision"] is None and out["4"]["decision"]["recall"] == 1.0
    assert not set(out["4"]["references"]["a"]) & set(eval_set["image_path"])
    assert flat["4/image_auroc"] == 1.0 and "4/decision/recall" in flat


def test_the_roc_by_references_has_a_line_per_mode_with_its_headline():
    from vmad_pipeline.evaluation.figures import plot_shot_roc

    labels = np.array([0, 0, 1, 1])
    report = {
        "mean": {"image_auroc": 0.5},
        "shots": {
            "4": {"scores": [0.1, 0.2, 0.8, 0.9], "mean": {"image_auroc": 1.0}},
            "batch": {"scores": [0.3, 0.2, 0.8, 0.1], "mean": {"image_auroc": 0.75}},
            "note": "ignored",
        },
    }
    fig = plot_shot_roc(labels, np.array([0.5, 0.1, 0.4, 0.9]), report)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [
        "batch (mean per-class AUROC 0.750)",
        "k = 0 (mean per-class AUROC 0.500)",
        "k = 4 (mean per-class AUROC 1.000)",
    ]
    empty = plot_shot_roc(labels, np.zeros(4), {"mean": {}})  # zero-shot only: says so
    assert "no evaluation with references" in empty.texts[0].get_text()
