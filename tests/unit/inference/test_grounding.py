"""The answer's "where" and "what" words follow the model's own evidence (inference.grounding):
the drawn mask's location, the type head's name (or "an anomaly" where it abstains); the tokens
change with the text, so a conversation's next turn reads what the user read."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from helpers import REPO
from helpers.models import tiny_tokenizer

from vmad_pipeline import prompts
from vmad_pipeline.annotation.geometry import mask_geometry
from vmad_pipeline.annotation.taxonomy import Taxonomy
from vmad_pipeline.inference.grounding import (
    drawn_regions,
    evidence_answer,
    evidence_follow_ups,
    ground_text,
    question_kind,
    region_location,
    regrounded_ids,
)
from vmad_pipeline.metrics.text import broken_sentence, consistent_with


@pytest.mark.parametrize(
    "text, location, defect, expected",
    [
        (
            "Yes. There is a crack at the center.",
            "top left",
            "scratch",
            "Yes. There is a scratch at the top left.",
        ),
        (
            "Yes. There is a crack at the center.",
            "right",
            None,
            "Yes. There is an anomaly at the right.",
        ),
        (
            "Yes. There is an anomaly at the top.",
            "bottom right",
            "missing_part",
            "Yes. There is a missing part at the bottom right.",
        ),
        (
            "Yes. There is a crack at the center.",
            "left",
            False,
            "Yes. There is a crack at the left.",
        ),
        ("No. It looks normal.", "left", "crack", "No. It looks normal."),
        ("It is at the center.", "bottom left", "crack", "It is at the bottom left."),
        ("It is a hole.", "top", "stain", "It is a stain."),
        ("It is a hole.", "top", None, "It is an anomaly."),
        # free text keeps its words, the location phrase follows the mask
        (
            "A crack runs at the top right of the part.",
            "left",
            "hole",
            "A crack runs at the left of the part.",
        ),
    ],
)
def test_the_slots_are_set_from_the_evidence(text, location, defect, expected):
    assert ground_text(text, location, defect) == expected


def test_a_drawn_region_is_the_mask_or_the_peak_of_a_faint_map():
    maps = np.zeros((3, 12, 12), np.float32)
    maps[0, 0:3, 9:12] = 0.9  # a mask at the top right
    maps[1, 10, 1] = 0.3  # faint: its peak, at the bottom left
    regions = drawn_regions(maps)
    assert [region_location(r) for r in regions] == ["top right", "bottom left", "center"]
    assert regions[0].sum() == 9 and regions[1].sum() == 1 and regions[2].all()


def test_the_tokens_change_with_the_text():
    tok = tiny_tokenizer()
    seg = tok.convert_tokens_to_ids("[SEG]")
    text = "Yes. There is a crack at the center."
    ids = [seg, *tok.encode(" " + text, add_special_tokens=False), tok.eos_token_id]
    assert regrounded_ids(tok, ids, text, text) == ids  # unchanged: the very tokens
    grounded = ground_text(text, "top left", None)
    out = regrounded_ids(tok, ids, text, grounded)
    assert out[0] == seg and out[-1] == tok.eos_token_id
    assert tok.decode(out, skip_special_tokens=True).strip() == grounded


TAXONOMY = Taxonomy.from_dict(yaml.safe_load((REPO / "conf/base/taxonomy.yml").read_text()))


def top_right() -> np.ndarray:
    region = np.zeros((64, 64), bool)
    region[4:14, 44:60] = True  # 160 of 4,096 pixels: "medium" in RIAD's size words
    return region


def test_the_questions_training_asks_are_known_by_their_kind():
    for kind, questions in prompts.FOLLOW_UPS.items():
        for q in questions:
            assert question_kind(q) == kind
            assert question_kind(f"  {q.upper()}  ") == kind
    assert question_kind("Why is it there?") is None


@pytest.mark.parametrize("defect", ["crack", "missing_part", None])
def test_evidence_answers_are_whole_sentences_that_agree_with_the_first_answer(defect):
    first = prompts.detection_answer(anomalous=True, defect=defect, location="top right")
    first = first.replace("[SEG] ", "")
    said = {k: evidence_answer(k, top_right(), defect, True) for k in prompts.FOLLOW_UPS}
    assert said["location"] == "It is at the top right."
    assert said["type"] == f"It is {prompts.a_defect(defect) if defect else 'an anomaly'}."
    described = said["description"]
    assert "top right" in described and "medium" in described
    assert (prompts.a_defect(defect)[2:] if defect else "anomaly") in described.replace("_", " ")
    for kind in prompts.ANSWER_KINDS:
        assert not broken_sentence(said[kind]), said[kind]
        assert consistent_with(said[kind], first, TAXONOMY, names_type=kind == "description")


def test_after_a_no_every_follow_up_says_the_part_looks_normal():
    for kind in prompts.FOLLOW_UPS:
        said = evidence_answer(kind, top_right(), "crack", False)
        assert "normal" in said and "top right" not in said and "crack" not in said
        assert consistent_with(said, "No. It looks normal.", TAXONOMY, names_type=True)


def test_only_the_questions_training_asks_are_answered_from_the_evidence():
    tok = tiny_tokenizer()
    maps = np.zeros((3, 64, 64), np.float32)
    maps[:, 4:14, 44:60] = 0.9
    slots = [("top right", "crack", True), ("top right", None, True), ("top right", "hole", False)]
    questions = ["Where is it?", "Why is it there?", "What kind of defect is it?"]
    answered = evidence_follow_ups(tok, questions, slots, maps)
    assert set(answered) == {0, 2}  # the free question is the LLM's
    ids, text = answered[0]
    assert text == "It is at the top right."
    assert ids == prompts.encode_answer(tok, text) and ids[-1] == tok.eos_token_id
    assert answered[2][1] == prompts.FOLLOW_UP_NONE
    assert evidence_follow_ups(tok, questions, slots, None) == {}  # no map drawn: none
    # no type read (no head): after a "Yes" only "where" is the evidence's; the LLM named the type
    unread = [("top right", False, True)] * 3
    asked = ["Where is it?", "What kind of defect is it?", "Describe it."]
    assert set(evidence_follow_ups(tok, asked, unread, maps)) == {0}


def test_a_verdict_contradicted_by_the_answer_is_the_word_it_must_say():
    from vmad_pipeline.inference.grounding import verdict_rows

    yes, no, prefix = 7, 8, 1  # each answer: [prefix token, Yes / No, ...]
    answers = [[1, yes, 3], [1, no, 3], [1, yes], [1, no], [1]]
    scores = [0.9, 0.9, 0.1, 0.1, 0.9]
    assert verdict_rows(answers, prefix, scores, [0.5] * 5, yes, no) == {yes: [1, 4], no: [2]}
    assert verdict_rows(answers, prefix, scores, [None] * 5, yes, no) == {}  # no threshold
    assert verdict_rows(answers[:1], prefix, [0.5], [0.5], yes, no) == {}  # at it: anomalous


def test_a_drawn_mask_loses_its_specks_not_its_second_defect():
    maps = np.zeros((1, 32, 32), np.float32)
    maps[0, 4:12, 4:12] = 0.9  # the defect: 64 pixels
    maps[0, 20:26, 20:26] = 0.9  # a second one, over half its size: kept
    maps[0, 30, 1] = 0.9  # a speck of one pixel: dropped
    (region,) = drawn_regions(maps)
    assert region.sum() == 64 + 36 and not region[30, 1]
    geometry = mask_geometry(region)
    assert geometry["n_regions"] == 2
