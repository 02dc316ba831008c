"""What the predictor returns for a batch of images and the metric report reads: anomaly maps,
image scores and answers. It lives here, not beside the predictor, because evaluation may not
import inference (docs/architecture.md); ``inference.predictor`` imports it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from vmad_pipeline.metrics.text import parse_yes_no


def answer_slot(location: str, named: str | None | bool, answer: str) -> tuple:
    """What a first answer's follow-ups are grounded on (``inference.grounding``): the drawn
    mask's location, the type head's name (None: it abstains; False: not read) and whether the
    answer said "Yes"."""
    return (location, named, parse_yes_no(answer) is True)


@dataclass
class Predictions:
    maps: np.ndarray  # N x H x W float32: sigmoid of the mask logits (anomaly map)
    map_max: np.ndarray  # N: max of each map
    p_yes: np.ndarray  # N: P(yes) of the detection question
    scores: np.ndarray  # N: image score by the predictor's ScoreRule
    answers: list[str]  # the answers to the detection question, as a user reads them
    seg_found: np.ndarray  # N bool: [SEG] was emitted (else the fallback state was used)
    answer_ids: list[list[int]] | None = None  # the generated tokens ([SEG], EOS included)
    significance: np.ndarray | None = None  # N x H x W: the anomaly expert's map (if any)
    expert_scores: np.ndarray | None = None  # N: the expert's image score (if any)
    # N: each image's median patch distance to its normal references (None: zero-shot)
    reference_distance: np.ndarray | None = None
    # the answers' grounding (inference.grounding): each drawn mask's location, and the type
    # head's name for what is inside it (None: it abstains; False: not asked, the answer naming
    # no defect; the list is None without a head)
    drawn_locations: list[str] | None = None
    named_types: list[str | None] | None = None
    # N x H x W: the maps the [SEG] drew, where ``maps`` are them re-weighted by the image
    # against itself (models/self_comparison.py); None: ``maps`` are them
    drawn_maps: np.ndarray | None = None
    # N: what each score was multiplied by (models.self_comparison.score_factors: below 1 for a
    # zero-shot image that repeats itself everywhere); None: nothing
    score_factors: np.ndarray | None = None

    def seg_maps(self) -> np.ndarray:
        """The maps the answers' [SEG] drew: what the words and the follow-ups read."""
        return self.maps if self.drawn_maps is None else self.drawn_maps

    def slots(self) -> list[tuple] | None:
        """Each image's (drawn-mask location, type, whether its answer said "Yes") to ground
        its follow-up answers on (``inference.grounding``; type False: no type head); None when
        not grounded."""
        if self.drawn_locations is None:
            return None
        named = self.named_types or [False] * len(self.drawn_locations)
        parts = zip(self.drawn_locations, named, self.answers, strict=True)
        return [answer_slot(*part) for part in parts]

    def as_dict(self) -> dict:
        """The fields by name, and the answers again as ``detection_answers`` (what the grading
        reads)."""
        return {**self.__dict__, "detection_answers": self.answers}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Predictions:
        """The predictions of an :meth:`as_dict` (the same objects, not copies); its other keys
        (``detection_answers``, the evaluation's ``decision``, ``follow_ups``, ...) are left out."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
