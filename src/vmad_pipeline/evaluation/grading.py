"""Grading the answers to the detection question: what was parsed from each answer and whether
each part is right (the rules are ``metrics/text.py``'s)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vmad_pipeline import prompts
from vmad_pipeline.annotation.geometry import mask_geometry
from vmad_pipeline.annotation.taxonomy import Taxonomy
from vmad_pipeline.metrics.text import (
    parse_defect_type,
    parse_location,
    parse_object,
    parse_yes_no,
)


def _gt_defect_id(row: Any) -> int:
    defect_id = getattr(row, "defect_id", -1)
    return -1 if defect_id is None or pd.isna(defect_id) else int(defect_id)


def grade_answers(
    eval_set: pd.DataFrame,
    predictions: dict[str, Any],
    masks: list[np.ndarray],
    taxonomy: dict[str, Any] | None,
) -> pd.DataFrame:
    """One row per test image: the detection question and answer, its P(yes) and image score,
    what was parsed from the answer and whether each part is right. ``type_correct`` and
    ``location_correct`` are only set on anomalous images (with a taxonomy type / a mask);
    ``type_correct`` is unset everywhere without a taxonomy."""
    n = len(eval_set)
    answers = list(predictions.get("detection_answers") or [""] * n)
    if len(answers) != n or len(masks) != n:
        raise ValueError(
            f"{n} test images but {len(answers)} detection answers and {len(masks)} masks"
        )
    tax = Taxonomy.from_dict(taxonomy) if taxonomy else None
    p_yes, scores = predictions.get("p_yes"), predictions["scores"]
    follow = predictions.get("follow_ups") or {}
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
                "named_object": obj,
                "object_correct": (obj == asked) if obj is not None else None,
                "named_type": named.name if named else None,
                "type_correct": (named is not None and named.id == gt_id)
                if (tax is not None and anomalous and gt_id >= 0)
                else None,
                **_follow_ups(follow, i, gt_location, gt_id if anomalous else -1, tax),
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


def _follow_ups(follow: dict, i: int, gt_location, gt_id: int, tax) -> dict:
    """The follow-up answers of image ``i`` (``follow``: kind -> answer or None per image) and
    whether they are right: the location against the mask's, the type against the label's."""
    where = (follow.get("location") or [None] * (i + 1))[i]
    what = (follow.get("type") or [None] * (i + 1))[i]
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
