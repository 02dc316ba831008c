"""Text-level metrics: what a generated answer says, parsed, and scored against the ground truth.

Parsing rules (each the one place for its rule; docs/evaluation.md repeats them):

* **yes/no** (:func:`parse_yes_no`): the answer's first word, case-insensitive, is "yes" or "no"
  (the model is trained to start its answer to the detection question with "Yes." or "No.",
  ``prompts.detection_answer``; [SEG] is removed from the text a user sees). Anything else is
  unparseable (None).
* **object name** (:func:`parse_object`): the name in "... of the <name>." or "The <name> looks
  normal", the two places the trained answer names the object; correct when it equals the name
  asked about (case and spaces normalised). An answer that names no object is not counted.
* **location** (:func:`parse_location`): the first phrase of the 3 x 3 location grid of
  ``annotation/geometry.py`` (``LOCATIONS``: "top left", ..., "center", ...) in the answer, as
  whole words, longer phrases first ("top left" before "top"). The ground truth is the grid cell
  of the mask centroid, :func:`~vmad_pipeline.annotation.geometry.mask_geometry`'s ``location``.
* **defect type** (:func:`parse_defect_type`): the first defect type the answer names, by name or
  synonym (:meth:`~vmad_pipeline.annotation.taxonomy.Taxonomy.names_in`). The first one counts,
  so an answer listing every type is not rewarded.
* **multiple choice** (:func:`parse_option`): an option letter standing first in the answer
  ("B", "B.", "B)", "(B) ..."; not "A scratch", where "A" is the article); else the single
  option whose text (final full stop dropped) occurs in the answer as whole words; else None.
* **free text** (:func:`rouge_l_f`, the description / impact / suggestion answers): ROUGE-L
  F-measure against the reference answer, Google's ``rouge-score`` with ``use_stemmer=True``
  (lower-cased, runs of letters and digits as tokens, Porter-stemmed).
* **broken sentence** (:func:`broken_sentence`): a free answer that is empty, does not end in
  ". ! ?", or ends on a word no sentence ends on ("the", "of", "is", ...; a size after its
  article, "It is a small.", the break-off issue 26 saw).
* **consistency** (:func:`consistent_with`): a free answer says nothing its detection answer
  contradicts: after "Yes" not that the part looks normal, no other location, and a description
  names the detection answer's type (none where it said "an anomaly"); after "No", that the part
  looks normal and no place.

Unparseable answers count as wrong in every accuracy, and are counted separately.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from vmad_pipeline.annotation.geometry import LOCATIONS
from vmad_pipeline.annotation.taxonomy import DefectType, Taxonomy

__all__ = [
    "parse_yes_no",
    "parse_location",
    "parse_defect_type",
    "parse_object",
    "parse_option",
    "answer_accuracy",
    "balanced_answer_accuracy",
    "rouge_l_f",
    "ROUGE_L_SETTINGS",
    "broken_sentence",
    "consistent_with",
]

_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)
_LOCATION = re.compile(
    r"\b("
    + "|".join(re.escape(p).replace(r"\ ", r"[\s\-]+") for p in sorted(LOCATIONS, key=len)[::-1])
    + r")\b",
    re.IGNORECASE,
)
# "(B) ...", "B.", "B:", "B)" or just "B"; not "A scratch ..." (the article).
_LEADING_LETTER = re.compile(r"^\W*?(?:\(([A-Z])\)|([A-Z])(?:[.:)]|\s*$))")


def parse_yes_no(answer: str) -> bool | None:
    """True for "Yes...", False for "No...", None when the first word is neither."""
    m = _YES_NO.match(answer or "")
    return None if m is None else m.group(1).lower() == "yes"


def parse_location(answer: str) -> str | None:
    """The first location phrase of the grid in ``answer`` (normalised to ``LOCATIONS``), or None."""
    m = _LOCATION.search(answer or "")
    return None if m is None else re.sub(r"[\s\-]+", " ", m.group(1).lower())


_OBJECT = re.compile(r"(?:\bof the ([^.;,]+?)\s*[.;,]|\bthe ([^.;,]+?) looks normal)", re.I)


def parse_object(answer: str) -> str | None:
    """The object the answer names ("... of the bottle cap." / "The bottle cap looks normal"),
    lower case with single spaces; None when it names none."""
    m = _OBJECT.search(answer or "")
    if m is None:
        return None
    return re.sub(r"\s+", " ", (m.group(1) or m.group(2)).strip().lower())


def parse_defect_type(answer: str, taxonomy: Taxonomy) -> DefectType | None:
    """The first defect type named in ``answer`` (name or synonym), or None."""
    found = taxonomy.names_in(answer or "")
    return found[0] if found else None


def parse_option(answer: str, options: Mapping[str, str]) -> str | None:
    """The chosen option letter: a leading letter that is one of ``options``; else the one option
    whose text (without its final full stop) occurs in the answer; else None."""
    text = (answer or "").strip()
    m = _LEADING_LETTER.match(text)
    if m and (m.group(1) or m.group(2)) in options:
        return m.group(1) or m.group(2)
    hits = []
    for key, value in options.items():
        words = value.strip().rstrip(".").strip()
        if words and re.search(r"\b" + re.escape(words) + r"\b", text, re.IGNORECASE):
            hits.append(key)
    return hits[0] if len(hits) == 1 else None


def _predicted(labels: np.ndarray, parsed: Sequence[bool | None]) -> np.ndarray:
    """Parsed yes/no as 0/1, with an unparseable answer set to the wrong class (so it counts
    wrong in both accuracies while sklearn's balanced accuracy still applies)."""
    if len(parsed) != labels.size:
        raise ValueError(f"got {labels.size} labels but {len(parsed)} parsed answers")
    return np.array(
        [int(p) if p is not None else 1 - y for p, y in zip(parsed, labels, strict=True)],
        dtype=np.int64,
    )


def _labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    y = np.asarray(labels).astype(np.int64).ravel()
    if y.size == 0:
        raise ValueError("no answers to score")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError(f"labels must be 0/1, got values {sorted(set(y.tolist()))}")
    return y


def answer_accuracy(labels: Sequence[int] | np.ndarray, parsed: Sequence[bool | None]) -> float:
    """Share of answers whose yes/no equals the label (1 = anomalous = "yes"); None is wrong."""
    y = _labels(labels)
    return float(np.mean(_predicted(y, parsed) == y))


def balanced_answer_accuracy(
    labels: Sequence[int] | np.ndarray, parsed: Sequence[bool | None]
) -> float:
    """Mean of the accuracy on anomalous and on normal images (``balanced_accuracy_score``);
    None is wrong. NaN when only one class is present (undefined)."""
    y = _labels(labels)
    if np.unique(y).size < 2:
        return float("nan")
    return float(balanced_accuracy_score(y, _predicted(y, parsed)))


# Free-text answers: ROUGE-L F-measure (longest common subsequence of the tokens, Lin 2004),
# computed by Google's ``rouge-score`` (Apache-2.0, the reference Python re-implementation of
# ROUGE-1.5.5 that most papers' numbers come from) rather than by our own LCS: deterministic, no
# model, no download. Its tokenizer lower-cases, keeps runs of [a-z0-9] and, with
# ``use_stemmer=True``, Porter-stems tokens longer than 3 characters ("scratches" = "scratch"),
# so an answer is not penalised for inflection. No stop words are removed.
ROUGE_L_SETTINGS = "rouge-score RougeScorer(['rougeL'], use_stemmer=True): F-measure"


@functools.cache
def _rouge():
    """The scorer, built on first use: ``rouge-score`` imports NLTK (seconds), which every
    importer of this module (the chat, the demo, the REST server) would otherwise pay."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_f(reference: str, answer: str) -> float:
    """ROUGE-L F-measure of ``answer`` against ``reference`` (:data:`ROUGE_L_SETTINGS`), in
    [0, 1]: 2PR / (P + R) with P = LCS / answer tokens, R = LCS / reference tokens; 0 when
    either has no token."""
    return float(_rouge().score(reference or "", answer or "")["rougeL"].fmeasure)


# Words no sentence ends on, and the sizes RIAD's answers use (annotation.geometry).
_DANGLING = frozenset("a an the of at on in to with and or but is are was its for from by".split())
_SIZES = frozenset("tiny small medium large".split())
_NORMAL = re.compile(r"\blooks? normal\b", re.IGNORECASE)


def broken_sentence(answer: str) -> bool:
    """The free answer breaks off (see the module's rules)."""
    text = (answer or "").strip()
    words = re.findall(r"[a-z]+", text.lower())
    if not words or text[-1] not in ".!?":
        return True
    return words[-1] in _DANGLING or (words[-1] in _SIZES and words[-2:-1] in (["a"], ["an"]))


def consistent_with(answer: str, detection: str, taxonomy: Taxonomy, *, names_type: bool) -> bool:
    """The free ``answer`` says nothing its ``detection`` answer contradicts (see the module's
    rules); ``names_type``: the kind of answer that names the type (the description)."""
    says_normal = parse_yes_no(answer) is False or bool(_NORMAL.search(answer or ""))
    if parse_yes_no(detection) is not True:
        return says_normal and parse_location(answer) is None
    where = parse_location(answer)
    if says_normal or (where is not None and where != parse_location(detection)):
        return False
    return not names_type or parse_defect_type(answer, taxonomy) == parse_defect_type(
        detection, taxonomy
    )
