"""Grading the answers to the detection question and its follow-ups: what was parsed from each
answer and whether each part is right (the rules are ``metrics/text.py``'s); the long follow-ups
(description, impact, suggestion: level 4 of the hierarchical text evaluation) scored by ROUGE-L
F against the image's RIAD answer, told about "the part" as training tells it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vmad_pipeline import prompts
from vmad_pipeline.annotation.answers import follow_up_answer
from vmad_pipeline.annotation.geometry import mask_geometry
from vmad_pipeline.annotation.taxonomy import Taxonomy
from vmad_pipeline.metrics.text import (
    broken_sentence,
    consistent_with,
    parse_defect_type,
    parse_location,
    parse_object,
    parse_yes_no,
    rouge_l_f,
)

# Follow-up kinds of prompts.FOLLOW_UPS by level of the text hierarchy (docs/evaluation.md):
# level 3 where, level 2 what kind (short answers, parsed), level 4 the RIAD answers' kinds
# (free text, ROUGE-L F). Level 1 is the detection answer itself.
SHORT_KINDS = ("location", "type")
LONG_KINDS = tuple(prompts.ANSWER_KINDS)  # description, impact, suggestion


def follow_up_kinds(hierarchy: bool) -> tuple[str, ...]:
    """The follow-ups the evaluation asks: where and what kind, and with ``hierarchy`` the
    description, impact and suggestion too."""
    return SHORT_KINDS + (LONG_KINDS if hierarchy else ())


def _gt_defect_id(row: Any) -> int:
    defect_id = getattr(row, "defect_id", -1)
    return -1 if defect_id is None or pd.isna(defect_id) else int(defect_id)


def grade_answers(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    taxonomy: dict[str, Any] | None,
    riad_qa: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per test image: the detection question and answer, its P(yes) and image score,
    what was parsed from the answer and whether each part is right. ``type_correct`` and
    ``location_correct`` are only set on anomalous images (with a taxonomy type / a mask);
    ``type_correct`` is unset everywhere without a taxonomy. The long follow-ups' ROUGE-L F is
    set where one was asked and ``riad_qa`` has the image's answers (:func:`_described`)."""
    n = len(eval_set)
    answers = list(predictions.get("detection_answers") or [""] * n)
    if len(answers) != n or len(masks) != n:
        raise ValueError(
            f"{n} test images but {len(answers)} detection answers and {len(masks)} masks"
        )
    tax = Taxonomy.from_dict(taxonomy) if taxonomy else None
    p_yes, scores = predictions.get("p_yes"), predictions["scores"]
    follow = predictions.get("follow_ups") or {}
    drawn = predictions.get("drawn_locations") or [None] * n  # inference.grounding
    probe = predictions.get("type_probe")  # the type head on the true mask (none: no head)
    records = [] if riad_qa is None else riad_qa.to_dict("records")
    qa = {(r["source"], r["image_path"]): r for r in records}
    rows = []
    for i, r in enumerate(eval_set.itertuples()):
        answer, anomalous = answers[i], bool(r.label)
        said = parse_yes_no(answer)
        gt_location = (mask_geometry(masks[i])["location"] or None) if anomalous else None
        location = parse_location(answer)
        named = parse_defect_type(answer, tax) if tax else None
        gt_id = _gt_defect_id(r)
        obj = parse_object(answer)
        asked = " ".join(prompts.object_name(r.category).lower().split())
        rows.append(
            {
                "source": r.source,
                "image_path": r.image_path,
                "category": r.category,
                "label": int(r.label),
                "defect_type": (getattr(r, "defect_type", "") or "") if anomalous else "",
                "question": prompts.vqa_question(r.category),
                "answer": answer,
                "p_yes": None if p_yes is None else float(p_yes[i]),
                "score": float(scores[i]),
                "said_anomalous": said,
                "answer_parsed": said is not None,
                "answer_correct": said is not None and said == anomalous,
                "location": location,
                "gt_location": gt_location,
                "location_correct": (location == gt_location) if gt_location else None,
                # the location of the mask the model drew, and whether the answer's words say it
                "drawn_location": drawn[i],
                "mask_location_correct": (drawn[i] == gt_location)
                if (gt_location and drawn[i])
                else None,
                "location_follows_mask": (location == drawn[i])
                if (gt_location and drawn[i] and location)
                else None,
                "named_object": obj,
                "object_correct": (obj == asked) if obj is not None else None,
                "named_type": named.name if named else None,
                "type_correct": (named is not None and named.id == gt_id)
                if (tax is not None and anomalous and gt_id >= 0)
                else None,
                "probe_type": probe[i] if probe and anomalous else None,
                "probe_type_correct": (probe[i] == tax.by_id(gt_id).name)
                if (probe and tax is not None and anomalous and gt_id >= 0)
                else None,
                **_follow_ups(follow, i, gt_location, gt_id if anomalous else -1, tax),
                **_described(follow, i, qa.get((r.source, r.image_path)), r.category),
                **_long_checks(follow, i, answer, tax),
            }
        )
    graded = pd.DataFrame(rows)
    for name, setting in (predictions.get("region_settings") or {}).items():
        # the same images answered with other regions (no region, the true one): their grades
        other = grade_answers(
            eval_set, {"detection_answers": setting["answers"], "scores": scores}, masks, taxonomy
        )
        for flag in ("answer_correct", "location_correct", "type_correct"):
            graded[f"{name}_{flag}"] = other[flag]
    return graded


def _asked(follow: dict, kind: str, i: int) -> str | None:
    """Image ``i``'s answer to the follow-up ``kind`` (None: not asked)."""
    return (follow.get(kind) or [None] * (i + 1))[i]


def _follow_ups(follow: dict, i: int, gt_location, gt_id: int, tax) -> dict:
    """The follow-up answers of image ``i`` (``follow``: kind -> answer or None per image) and
    whether they are right: the location against the mask's, the type against the label's."""
    where, what = _asked(follow, "location", i), _asked(follow, "type", i)
    location = parse_location(where) if where is not None else None
    named = parse_defect_type(what, tax) if (what is not None and tax) else None
    return {
        "follow_up_location_answer": where,
        "follow_up_location_correct": (location == gt_location)
        if (where is not None and gt_location)
        else None,
        "follow_up_type_answer": what,
        "follow_up_type_correct": (named is not None and named.id == gt_id)
        if (what is not None and tax is not None and gt_id >= 0)
        else None,
    }


def _described(follow: dict, i: int, qa: dict | None, category: str) -> dict:
    """Level 4 of image ``i``: per long kind its answer, the reference and ROUGE-L F. The reference
    is the answer training teaches for that follow-up (``annotation.answers.follow_up_answer``:
    the image's RIAD answer with the class renamed to ``prompts.GENERIC_OBJECT``); only anomalous
    images are asked, so it is the anomalous image's. Unset where not asked or without RIAD
    answers (``qa`` None: another tree, an image the annotation skipped)."""
    out: dict[str, Any] = {}
    anomalous = np.ones((1, 1), bool)  # the label decides, not the mask resized to eval_size
    for kind in LONG_KINDS:
        said = _asked(follow, kind, i)
        reference = None
        if said is not None and qa:
            reference = follow_up_answer(kind, anomalous, None, qa, category)
        out |= {
            f"follow_up_{kind}_answer": said,
            f"follow_up_{kind}_reference": reference,
            f"follow_up_{kind}_rouge_l": None if reference is None else rouge_l_f(reference, said),
        }
    return out


def _long_checks(follow: dict, i: int, detection: str, tax: Taxonomy | None) -> dict:
    """Of image ``i``'s long answers (those asked): whether each says nothing its detection
    answer contradicts (``metrics.text.consistent_with``; unset without a taxonomy) and how
    many break off (``metrics.text.broken_sentence``); unset where none was asked."""
    said = {k: _asked(follow, k, i) for k in LONG_KINDS}
    said = {k: v for k, v in said.items() if v is not None}
    if not said:
        return {"level4_consistent": None, "level4_broken": None}
    consistent = None
    if tax is not None:
        consistent = all(
            consistent_with(v, detection, tax, names_type=k == "description")
            for k, v in said.items()
        )
    return {
        "level4_consistent": consistent,
        "level4_broken": sum(broken_sentence(v) for v in said.values()),
    }
