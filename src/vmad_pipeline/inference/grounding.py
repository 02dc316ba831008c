"""The answer's words follow the model's own evidence (docs/words.md).

The LLM writes the answer; two of its words are read from evidence rather than trusted to it:
- **where**: "at the <location>" is the location of the mask the answer's [SEG] drew (the grid
  cell of its centroid, the rule RIAD's answers and the grading use: ``annotation.geometry``);
  measured before this rule, the small preset's own words agreed with its mask in 77% of the
  unseen classes' defects (seed 0);
- **what**: the defect-type slot ("There is <a scratch> at ...", "It is <a scratch>.") is the
  type head's name for what is inside that mask (``models.type_head``), "an anomaly" where it
  abstains.

The generated tokens are changed with the text (a conversation's next turn reads the words the
user read). The follow-ups training asks (``prompts.FOLLOW_UPS``: where, what kind, describe it,
how severe, what should be done) are answered from that evidence whole (:func:`evidence_answer`):
the small preset's LLM wrote them broken and contradicting its own first answer ("No, the part."
after "Yes. There is a crack"; issue 26), and the evidence answers them in complete sentences
whatever the LLM's size. Off with ``evaluate.ground_words: false`` (the LLM's own words, for
measuring them).
"""

from __future__ import annotations

import re

import numpy as np
from scipy import ndimage

from vmad_pipeline import prompts
from vmad_pipeline.annotation.answers import follow_up_answer
from vmad_pipeline.annotation.geometry import LOCATIONS, location_phrase, mask_geometry
from vmad_pipeline.annotation.taxonomy import DefectType
from vmad_pipeline.annotation.templates import template_qa
from vmad_pipeline.prompts import a_defect

MASK_LEVEL = 0.5  # the map's mask: SAM's logit > 0
PEAK_SHARE = 0.8  # no pixel past MASK_LEVEL: the region within this share of the map's peak
SPECK_SHARE = 0.1  # a drawn mask's parts under this share of its largest one are dropped
UNKNOWN_NAME = "anomaly"  # the type's name when the head names none
UNKNOWN = a_defect(UNKNOWN_NAME)  # "an anomaly": what the answer says then
_WHERE = re.compile(r"\bat the (" + "|".join(sorted(LOCATIONS, key=len, reverse=True)) + r")\b")
_WHAT = re.compile(r"\b(There is|It is) (an? [a-z]+(?: [a-z]+)?)(?= at the\b|\.)")
_KINDS = {" ".join(q.lower().split()): k for k, qs in prompts.FOLLOW_UPS.items() for q in qs}
# which of RIAD's phrasings an evidence answer takes: the same evidence, the same words
PHRASING_SEED = 0


def drawn_regions(maps: np.ndarray) -> np.ndarray:
    """The drawn mask of each map (N x H x W probabilities): its pixels past
    :data:`MASK_LEVEL`, else (a faint map) those within :data:`PEAK_SHARE` of its peak; without
    its specks (:func:`without_specks`)."""
    maps = np.asarray(maps, np.float32)
    regions = maps >= MASK_LEVEL
    for i in np.flatnonzero(~regions.reshape(len(maps), -1).any(1)):
        regions[i] = maps[i] >= PEAK_SHARE * maps[i].max() if maps[i].max() > 0 else True
    return np.stack([without_specks(r) for r in regions]) if len(regions) else regions


def without_specks(region: np.ndarray) -> np.ndarray:
    """``region`` without its 8-connected parts smaller than :data:`SPECK_SHARE` of its largest.
    A zero-shot map breaks into specks around the defect, which the words counted as "separate
    areas": 52% of the unseen defects' descriptions said more than three (seeds 0-2 at dae60d3,
    zero-shot; RIAD's answers, from the true masks, 10% at seed 0); without the specks 17%
    (54a545f), with the same location accuracy and 3 of 180 fewer types named right."""
    labels, n = ndimage.label(region, structure=np.ones((3, 3), bool))
    if n <= 1:
        return region
    sizes = ndimage.sum(region, labels, range(1, n + 1))
    return np.isin(labels, np.flatnonzero(sizes >= SPECK_SHARE * sizes.max()) + 1)


def region_location(region: np.ndarray) -> str:
    """The location phrase of a drawn mask (the centre for an empty one)."""
    found = mask_geometry(region)["location"]
    return found or location_phrase(*(s / 2 for s in region.shape), *region.shape)


def has_type_slot(text: str) -> bool:
    """The answer names a defect where :func:`ground_text` would set its type."""
    return bool(_WHAT.search(text))


def ground_text(text: str, location: str | None, defect: str | None | bool) -> str:
    """``text`` with its location phrase set to ``location`` and its type slot to ``defect``'s
    name with its article (None: :data:`UNKNOWN`; False: the slot left as written). Text
    without those phrases ("No. It looks normal.") is returned as it is."""
    if location:
        text = _WHERE.sub(f"at the {location}", text)
    if defect is not False:
        name = UNKNOWN if defect is None else a_defect(defect)
        text = _WHAT.sub(lambda m: f"{m.group(1)} {name}", text)
    return text


def regrounded_ids(tokenizer, ids: list[int], text: str, grounded: str) -> list[int]:
    """The generated tokens of a grounded answer: the same where the text did not change;
    else the tokens before the first word (the forced prefix, e.g. " [SEG]"), the grounded
    text's own tokens, and those after the last word ([SEG], end of sequence)."""
    if grounded == text:
        return ids
    special = set(tokenizer.all_special_ids)
    words = [i for i, t in enumerate(ids) if t not in special and tokenizer.decode([t]).strip()]
    if not words:
        return ids
    first, last = words[0], words[-1]
    space = " " if tokenizer.decode(ids[first : first + 1]).startswith(" ") else ""
    body = tokenizer.encode(space + grounded, add_special_tokens=False)
    return [*ids[:first], *body, *ids[last + 1 :]]


def question_kind(question: str) -> str | None:
    """The follow-up kind (``prompts.FOLLOW_UPS``) of a question training asks, case and spaces
    aside ("what kind of defect is it?": "type"); None for any other question."""
    return _KINDS.get(" ".join(question.lower().split()))


def evidence_answer(kind: str, region: np.ndarray, defect: str | None, said_yes: bool) -> str:
    """The answer to the follow-up ``kind`` from the first answer's evidence: ``region`` its
    drawn mask (H x W bool, :func:`drawn_regions`: never empty), ``defect`` the type head's
    name (None: :data:`UNKNOWN`),
    ``said_yes`` whether it said "Yes". The answers training teaches
    (``annotation.answers.follow_up_answer``), the long ones written by RIAD's templates from
    the drawn mask's location, size and regions: an answer that said "No" is followed by "the
    part looks normal", whatever the map shows."""
    mask = np.asarray(region, bool) if said_yes else np.zeros((1, 1), bool)
    qa = None
    if said_yes and kind in prompts.ANSWER_KINDS:
        qa = template_qa(
            category=prompts.GENERIC_OBJECT,
            defect=DefectType(-1, defect or UNKNOWN_NAME),
            geometry=mask_geometry(mask),
            seed=PHRASING_SEED,
        )
    return follow_up_answer(kind, mask, defect, qa, prompts.GENERIC_OBJECT)


def evidence_follow_ups(tokenizer, questions: list[str], slots: list[tuple], maps) -> dict:
    """The follow-ups among ``questions`` that training asks, answered from each image's
    evidence (:func:`evidence_answer`): row -> (its tokens as the model is trained to write
    them, its text). ``slots``: each image's (location, type, said yes) from its first answer
    (``evaluation.predictions.answer_slot``; type False: not read, no head or no type slot,
    and then a "Yes" leaves all but "where" to the LLM, whose first answer named the type);
    ``maps``: the maps of the first answers' [SEG] (N x H x W; None: none drawn, nothing
    answered here)."""
    out = {}
    for i, (question, (_, what, said_yes)) in enumerate(zip(questions, slots, strict=True)):
        kind = question_kind(question)
        if kind is None or maps is None:
            continue
        if what is False and said_yes and kind != "location":  # no type read: the LLM's word
            continue
        text = evidence_answer(kind, drawn_regions(maps[i : i + 1])[0], what or None, said_yes)
        out[i] = (prompts.encode_answer(tokenizer, text), text)
    return out


def verdict_rows(
    answer_ids: list[list[int]], prefix: int, scores, thresholds, yes: int, no: int
) -> dict[int, list[int]]:
    """The rows whose answer's Yes / No word contradicts their decision, by the word they must
    say: ``{yes: rows, no: rows}``. A row's decision is its score >= its threshold (the
    references-only threshold, where the image has one, zero-shot the model's calibrated one;
    None: none, and the row keeps its own word); its word is the token after the ``prefix``
    tokens both answers share. With two references or more the decision's threshold is chosen on
    the product's own normal images, the answer's word at P(yes) = 0.5 is not (issue 25: at k = 4
    they disagreed on 7 of 110 images, the decision right on all 7; seed 0 at 4c73d5a,
    ``benchmarks/answer_decision.py``)."""
    out: dict[int, list[int]] = {yes: [], no: []}
    for i, (ids, score, cut) in enumerate(zip(answer_ids, scores, thresholds, strict=True)):
        if cut is None:
            continue
        said = ids[prefix] if len(ids) > prefix else None
        must = yes if float(score) >= float(cut) else no
        if said != must:
            out[must].append(i)
    return {token: rows for token, rows in out.items() if rows}
