"""The answers that follow-up questions are taught (``training.samples``) and graded against
(``evaluation.grading``, the hierarchical levels): one rule for both, so evaluation compares a
model's answer with exactly what training showed it."""

from __future__ import annotations

import numpy as np

from vmad_pipeline import prompts
from vmad_pipeline.annotation.geometry import mask_geometry
from vmad_pipeline.annotation.taxonomy import normalise_name
from vmad_pipeline.annotation.templates import normal_answer

__all__ = ["follow_up_answer", "stored_answer", "renamed"]


def follow_up_answer(
    kind: str, mask: np.ndarray, defect: str | None, qa: dict | None, category: str
) -> str:
    """The answer to a follow-up of ``kind``: where (the mask's location), what kind (the
    defect type), or the stored RIAD description / impact / suggestion told about "the part"."""
    anomalous = bool(mask.any())
    if not anomalous and kind not in prompts.ANSWER_KINDS:
        return prompts.FOLLOW_UP_NONE
    if not anomalous:
        return stored_answer(kind, anomalous, qa, category)
    if kind == "location":
        return prompts.FOLLOW_UP_LOCATION.format(location=mask_geometry(mask)["location"])
    if kind == "type":
        name = prompts.a_defect(defect) if defect else "an anomaly"
        return prompts.FOLLOW_UP_TYPE.format(a_defect=name)
    if not qa:
        raise ValueError(f"a {kind!r} follow-up needs the image's RIAD answers")
    return stored_answer(kind, anomalous, qa, category)


def stored_answer(kind: str, anomalous: bool, qa: dict | None, category: str) -> str:
    """The image's RIAD answer of ``kind`` told about "the part" (answers never name a class);
    a normal image's (or one without RIAD answers): that the part looks normal."""
    generic = prompts.GENERIC_OBJECT
    if anomalous and qa:
        return renamed(str(qa[kind]), category, generic)
    return normal_answer(generic)


def renamed(text: str, category: str, name: str) -> str:
    """A stored RIAD answer about ``category`` told about ``name`` instead (a whole-word
    replacement of the class name)."""
    for form in {prompts.object_name(category), normalise_name(category)}:
        text = text.replace(form, name)
    return text
