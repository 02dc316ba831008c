"""Hierarchical text evaluation: ROUGE-L F against a hand-computed LCS and a naive twin, the
level-4 grading (renamed references, normal images and missing answers unset), the report by
level per class and as the class mean, and the follow-ups the evaluate node asks."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import REPO

from vmad_pipeline import prompts
from vmad_pipeline.configs import ConfigError
from vmad_pipeline.configs.evaluate import parse_evaluate_params
from vmad_pipeline.evaluation.figures import class_table_markdown
from vmad_pipeline.evaluation.grading import grade_answers
from vmad_pipeline.evaluation.predictions import Predictions
from vmad_pipeline.evaluation.report import compute_metrics
from vmad_pipeline.metrics.text import rouge_l_f

TAXONOMY = yaml.safe_load((REPO / "conf/base/taxonomy.yml").read_text())
SIZE = 4
LEVELS = {
    "level1_binary",
    "level2_type",
    "level3_location",
    "level4_description",
    "level4_impact",
    "level4_suggestion",
    "level4_rouge_l",
}


# ----------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_hand_computed() -> None:
    # reference: the part has a scratch (5 tokens); answer: a scratch on the part (5 tokens).
    # Longest common subsequence: "a scratch" (or "the part"), 2 tokens: P = R = 2/5, F = 0.4.
    assert rouge_l_f("the part has a scratch", "a scratch on the part") == pytest.approx(0.4)
    # Stemmed and lower-cased: "Scratches are visible." = [scratch, are, visibl];
    # "a scratch is visible" = [a, scratch, is, visibl]; LCS 2: P = 2/4, R = 2/3, F = 4/7.
    assert rouge_l_f("Scratches are visible.", "a scratch is visible") == pytest.approx(4 / 7)
    assert rouge_l_f("Polish it.", "polish IT") == 1.0
    assert rouge_l_f("Polish it.", "") == 0.0 and rouge_l_f("", "Polish it.") == 0.0


def _naive_rouge_l(reference: list[str], answer: list[str]) -> float:
    """F of the longest common subsequence, by trying every subsequence of the answer."""
    best = 0
    for k in range(len(answer), 0, -1):
        for picked in itertools.combinations(answer, k):
            it = iter(reference)
            if all(word in it for word in picked):  # a subsequence of the reference
                best = k
                break
        if best:
            break
    if best == 0:
        return 0.0
    p, r = best / len(answer), best / len(reference)
    return 2 * p * r / (p + r)


def test_rouge_l_matches_a_naive_lcs() -> None:
    words = ["the", "part", "has", "a", "dent", "at", "top", "left", "on"]  # stem to themselves
    rng = random.Random(0)
    for _ in range(200):
        ref = [rng.choice(words) for _ in range(rng.randint(1, 7))]
        ans = [rng.choice(words) for _ in range(rng.randint(1, 7))]
        got = rouge_l_f(" ".join(ref), " ".join(ans))
        assert got == pytest.approx(_naive_rouge_l(ref, ans)), (ref, ans)


# ----------------------------------------------------------------------------- grading

# hex_nut: 0 normal, 1 and 2 anomalous with RIAD answers; washer: 3 normal, 4 anomalous with
# RIAD answers, 5 anomalous without (an image the annotation did not cover).
LABELS = [0, 1, 1, 0, 1, 1]
QA = {
    1: ("The hex nut has a scratch.", "Weakens the hex nut.", "Polish it."),
    2: ("A scratch on the part.", "Cosmetic only.", "Polish it."),
    4: ("A scratch on the washer.", "Weakens the washer.", "Replace it."),
}
LONG = {  # the model's answers to "Describe it.", "How severe is it?", "What should be done?"
    1: ("A scratch on the part.", "Weakens the part.", "Replace it."),  # 0.4, 1.0, 0.5
    2: ("A scratch on the part.", "Weakens it badly.", "Replace it."),  # 1.0, 0.0, 0.5
    4: ("A scratch on the part.", "Weakens the part.", "Replace it."),  # 1.0, 1.0, 1.0
    5: ("Nothing to say.", "None.", "None."),  # no reference: not graded
}


def eval_set() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": "src",
            "category": ["hex_nut"] * 3 + ["washer"] * 3,
            "image_path": [f"img{i}.png" for i in range(6)],
            "mask_path": ["" if not y else f"m{i}.png" for i, y in enumerate(LABELS)],
            "label": LABELS,
            "defect_type": ["scratch" if y else "" for y in LABELS],
            "defect_id": [0 if y else -1 for y in LABELS],  # 0: scratch in the taxonomy
        }
    )


def riad_qa() -> pd.DataFrame:
    kinds = ("description", "impact", "suggestion")
    cats = eval_set()["category"]
    return pd.DataFrame(
        [
            {
                "source": "src",
                "image_path": f"img{i}.png",
                "category": cats[i],
                **dict(zip(kinds, a, strict=True)),
            }
            for i, a in QA.items()
        ]
    )


def masks() -> list[np.ndarray]:
    top_left = np.zeros((SIZE, SIZE), np.uint8)
    top_left[:2, :2] = 1
    return [top_left if y else np.zeros_like(top_left) for y in LABELS]


def follow_ups(hierarchy: bool = True) -> dict[str, list]:
    """Answers per kind, None for the images not asked (the normal ones)."""
    out = {
        "location": [None, "At the top left.", "At the top left.", None, "Bottom.", "Top left."],
        "type": [None, "It is a scratch.", "It is a crack.", None, "A scratch.", "A scratch."],
    }
    if hierarchy:
        for k, kind in enumerate(("description", "impact", "suggestion")):
            out[kind] = [LONG[i][k] if i in LONG else None for i in range(6)]
    return out


def predictions(hierarchy: bool = True) -> dict:
    rng = np.random.default_rng(0)
    maps = rng.random((6, SIZE, SIZE)).astype(np.float32)
    answers = ["No.", "Yes.", "Yes.", "No.", "Yes.", "No."]  # the last one wrong
    return {
        "maps": maps,
        "map_max": maps.reshape(6, -1).max(1),
        "scores": maps.reshape(6, -1).max(1),
        "p_yes": None,
        "answers": answers,
        "detection_answers": answers,
        "seg_found": np.ones(6, bool),
        "follow_ups": follow_ups(hierarchy),
    }


def graded(hierarchy: bool = True) -> pd.DataFrame:
    return grade_answers(eval_set(), predictions(hierarchy), masks(), TAXONOMY, riad_qa())


def test_level4_is_graded_against_the_renamed_riad_answer() -> None:
    g = graded()
    # training's renaming: "hex nut" -> "part", the reference the model was taught
    assert g.loc[1, "follow_up_description_reference"] == "The part has a scratch."
    assert g.loc[4, "follow_up_impact_reference"] == "Weakens the part."
    assert g["follow_up_description_rouge_l"].tolist()[1:3] == pytest.approx([0.4, 1.0])
    assert g["follow_up_impact_rouge_l"].tolist()[1:3] == pytest.approx([1.0, 0.0])
    assert g["follow_up_suggestion_rouge_l"].tolist()[1:3] == pytest.approx([0.5, 0.5])
    normal = [not y for y in LABELS]  # not asked
    for kind in ("description", "impact", "suggestion"):
        # image 5 was asked but has no RIAD answer: not graded
        assert g[f"follow_up_{kind}_answer"].isna().tolist() == normal
        assert g[f"follow_up_{kind}_rouge_l"].isna().tolist() == [*normal[:5], True]
        assert pd.isna(g.loc[5, f"follow_up_{kind}_reference"])


def test_level4_is_unset_without_answers_or_references() -> None:
    for g in (graded(hierarchy=False), grade_answers(eval_set(), predictions(), masks(), TAXONOMY)):
        assert g["follow_up_description_rouge_l"].isna().all()
        assert g["follow_up_suggestion_reference"].isna().all()


# ----------------------------------------------------------------------------- report


def test_report_by_level_per_class_and_mean() -> None:
    cfg = parse_evaluate_params({"eval_size": SIZE, "progress": False})
    report, flat, table = compute_metrics(
        eval_set(), Predictions.from_dict(predictions()), masks(), graded(), cfg
    )
    h = report["hierarchy"]
    assert set(h["mean"]) == LEVELS and set(h["per_class"]) == {"hex_nut", "washer"}
    nut, washer = h["per_class"]["hex_nut"], h["per_class"]["washer"]
    # hex_nut: description (0.4 + 1.0) / 2, impact (1 + 0) / 2, suggestion (0.5 + 0.5) / 2
    assert nut["level4_description"] == pytest.approx(0.7)
    assert nut["level4_impact"] == pytest.approx(0.5)
    assert nut["level4_suggestion"] == pytest.approx(0.5)
    assert nut["level4_rouge_l"] == pytest.approx(1.7 / 3, abs=1e-6)
    assert washer["level4_rouge_l"] == pytest.approx(1.0)  # image 5 (no reference) left out
    # levels 1 to 3: the detection answer's accuracy and the follow-ups' accuracies
    assert (nut["level1_binary"], nut["level2_type"], nut["level3_location"]) == (1.0, 0.5, 1.0)
    assert washer["level1_binary"] == pytest.approx(2 / 3, abs=1e-6)
    assert (washer["level2_type"], washer["level3_location"]) == (1.0, 0.5)
    # the unweighted mean over classes
    assert h["mean"]["level4_rouge_l"] == pytest.approx((1.7 / 3 + 1.0) / 2, abs=1e-6)
    assert h["mean"]["level4_description"] == pytest.approx(0.85)
    assert h["mean"]["level2_type"] == pytest.approx(0.75)
    assert h["counts"] == {"level4_asked": 12, "level4_graded": 9, "level4_broken": 0}
    assert (
        h["level4"]["metric"].startswith("rouge-score")
        and "use_stemmer=True" in h["level4"]["metric"]
    )
    # MLflow (before the test/ prefix) and the class table
    assert flat["hierarchy/level4_rouge_l"] == pytest.approx((1.7 / 3 + 1.0) / 2, abs=1e-6)
    assert flat["hierarchy/level1_binary"] == pytest.approx((1.0 + 2 / 3) / 2, abs=1e-6)
    assert flat["hex_nut/level4_rouge_l"] == pytest.approx(1.7 / 3)
    rows = table.set_index("category")
    assert rows.loc["washer", "level4_impact_rouge_l"] == pytest.approx(1.0)
    assert rows.loc["hex_nut", "level4_rouge_l"] == pytest.approx(1.7 / 3)
    md = class_table_markdown(table, report)
    head = next(line for line in md.splitlines() if line.startswith("| class"))
    assert "L4 ROUGE-L" in head and "L4 description R-L" in head


def test_report_without_level4_keeps_the_levels_and_hides_the_columns() -> None:
    cfg = parse_evaluate_params(
        {"eval_size": SIZE, "progress": False, "hierarchy": {"enabled": False}}
    )
    report, flat, table = compute_metrics(
        eval_set(), Predictions.from_dict(predictions(False)), masks(), graded(hierarchy=False), cfg
    )
    h = report["hierarchy"]
    assert h["mean"]["level4_rouge_l"] is None and h["mean"]["level1_binary"] is not None
    assert "hierarchy/level4_rouge_l" not in flat and "hierarchy/level2_type" in flat
    assert h["level4"]["enabled"] is False and h["counts"]["level4_asked"] == 0
    assert "L4 ROUGE-L" not in class_table_markdown(table, report)


# ----------------------------------------------------------------------------- asking


def test_every_level_is_asked_of_the_anomalous_images_only(monkeypatch) -> None:
    from vmad_pipeline.inference import chat
    from vmad_pipeline.inference.chat import follow_up_answers as _follow_ups

    asked = {}

    def fake_ask(predictor, images, categories, pred, rows, question, *, max_new_tokens, **kw):
        asked[question] = (rows.tolist(), max_new_tokens)
        return [f"answer to {question}" if r else None for r in rows]

    monkeypatch.setattr(chat, "ask_after_detection", fake_ask)
    cfg = parse_evaluate_params({"max_new_tokens": 5, "hierarchy": {"max_new_tokens": 40}})
    got = _follow_ups(None, None, eval_set(), None, cfg)
    assert list(got) == ["location", "type", "description", "impact", "suggestion"]
    budgets = {q: b for q, (_, b) in asked.items()}
    assert budgets == {
        "Where is it?": 5,
        "What kind of defect is it?": 5,
        "Describe it.": 40,
        "How severe is it?": 40,
        "What should be done?": 40,
    }
    assert all(rows == [bool(y) for y in LABELS] for rows, _ in asked.values())
    off = parse_evaluate_params({"hierarchy": {"enabled": False}})
    assert list(_follow_ups(None, None, eval_set(), None, off)) == ["location", "type"]


def test_hierarchy_parameters() -> None:
    shipped = yaml.safe_load((REPO / "conf/base/parameters_evaluate.yml").read_text())["evaluate"]
    cfg = parse_evaluate_params(shipped)
    assert cfg.hierarchy.enabled and cfg.hierarchy.max_new_tokens == 48 and cfg.follow_ups
    with pytest.raises(ConfigError, match=r"evaluate\.hierarchy\.enabled"):
        parse_evaluate_params({"follow_ups": False})
    assert not parse_evaluate_params(
        {"follow_ups": False, "hierarchy": {"enabled": False}}
    ).follow_ups
    with pytest.raises(ConfigError, match=r"hierarchy\.max_new_tokens"):
        parse_evaluate_params({"hierarchy": {"max_new_tokens": 0}})
    assert prompts.FOLLOW_UPS["description"][0] == "Describe it."
