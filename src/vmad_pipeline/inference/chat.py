"""A conversation about one image (``vmad-pipeline chat``, the web demo).

It opens with the detection question (:meth:`Detector.inspect`: score, decision, map, answer);
every follow-up ("where is it?", "how severe is it?", "what should be done?") is answered from the
same image with the earlier turns as context, the way training writes multi-turn conversations
(``training.samples.conversation_turns``, ``prompts.encode_turns``). The tokens after the
conversation's first [SEG] read that mask's evidence, as in training. A turn whose answer emits
[SEG] draws its own mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vmad_pipeline import prompts
from vmad_pipeline.evaluation.predictions import answer_slot
from vmad_pipeline.inference.references import inspection_args
from vmad_pipeline.inference.service import pictures


@dataclass
class Turn:
    question: str
    answer: str  # as a user reads it
    seg_found: bool
    mask: np.ndarray | None  # H x W uint8 (255 inside) at the image's size, where [SEG] was said
    overlay: np.ndarray | None


class Conversation:
    """The turns so far about one image (H x W x 3 uint8) of the object ``category``."""

    def __init__(
        self,
        detector,
        image: np.ndarray,
        category: str,
        *,
        max_new_tokens: int = 48,
        references=None,
    ) -> None:
        """``references``: the product's normal references (``inference.references.References``
        in shots mode), read by every turn; they decide at their own threshold."""
        category = prompts.object_text(category)  # the one rule for a user's text
        self.detector, self.image, self.category = detector, image, category
        self.max_new_tokens = max_new_tokens
        self.tensor = detector.tensor(image)
        self._eos = detector.predictor.tokenizer.eos_token_id
        self.references = references
        given = inspection_args(references, ["image"], [category])  # {}: zero-shot
        self._memories, cut = given.get("memories"), given.get("threshold")
        (self.inspection,) = detector.inspect([image], [category], **given)
        self.image_threshold = detector.image_threshold if cut is None else cut
        first = self.inspection
        self._turns: list[tuple[str, list[int]]] = [
            (prompts.vqa_prompt(category), _closed(first.answer_ids, self._eos))
        ]
        self._seg_map = first.square_map if first.seg_found else None
        # what the follow-ups are grounded on: the first answer's drawn mask, type and "Yes"
        slot = answer_slot(first.drawn_location, first.named_type, first.answer)
        self._slots = [slot] if first.drawn_location else None
        self.turns = [
            Turn(
                prompts.vqa_question(category),
                first.answer,
                first.seg_found,
                first.mask if first.seg_found else None,
                first.overlay if first.seg_found else None,
            )
        ]

    def ask(self, question: str) -> Turn:
        """The answer to ``question`` about the same image, the conversation kept. A question
        that is empty or places the image or [SEG] tokens is a ValueError; when the
        conversation outgrows the model's context, its oldest follow-ups are dropped (the first
        turn, which holds the image, stays). A turn that draws a mask drops the earlier turns'
        mask and overlay (each is shown or written when its turn is answered): however long a
        conversation runs, it holds the pictures of one turn, at the image's size."""
        question = prompts.question_text(question)  # the one rule for a user's text
        history = self._fit(question)
        pred = self.detector.predictor.follow_up(
            self.tensor[None],
            [history],
            [question],
            earlier_maps=None if self._seg_map is None else self._seg_map[None],
            max_new_tokens=self.max_new_tokens,
            references=self._memories,
            slots=self._slots,
        )
        ids, found, square = pred.answer_ids[0], bool(pred.seg_found[0]), pred.maps[0]
        text = pred.texts[0]
        mask = overlay = None
        if found:
            pics = pictures(self.image, square, self.detector.pixel_threshold)
            mask, overlay = pics["masks"], pics["overlays"]
            if self._seg_map is None:
                self._seg_map = square
            for earlier in self.turns:  # one drawn turn's pictures kept: memory stays bounded
                earlier.mask = earlier.overlay = None
        self._turns.append((question, _closed(ids, self._eos)))
        turn = Turn(question, text, found, mask, overlay)
        self.turns.append(turn)
        return turn

    def _fit(self, question: str) -> list[tuple[str, list[int]]]:
        """The turns that fit the context with the new question and its answer's budget."""
        predictor = self.detector.predictor
        limit = predictor.model.config.llm.max_positions - self.max_new_tokens
        turns = list(self._turns)
        while True:
            ids, _ = prompts.encode_turns(
                predictor.tokenizer, [*turns, (question, None)], predictor.model.image_slots
            )
            if len(ids) <= limit:
                return turns
            if len(turns) == 1:
                raise ValueError(
                    f"the question is too long for the model's context ({len(ids)} tokens with "
                    f"the image; {limit} fit)"
                )
            del turns[1]
            del self._turns[1]


def ask_after_detection(
    predictor,
    images,
    categories: list[str],
    predictions,
    rows: np.ndarray,
    question: str,
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str | None]:
    """The answer to ``question`` asked after each selected image's detection answer (``rows``:
    bool per image; ``predictions``: the predictor's ``Predictions`` of those images, whose
    answers and maps are the conversation so far); None for the images not asked."""
    picked = np.flatnonzero(rows)
    eos = predictor.tokenizer.eos_token_id
    slots = predictions.slots()
    histories = [
        [(prompts.vqa_prompt(categories[i]), _closed(predictions.answer_ids[i], eos))]
        for i in picked
    ]
    asked = predictor.follow_up(
        images[picked],
        histories,
        [question] * len(picked),
        earlier_maps=predictions.seg_maps()[picked],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        slots=None if slots is None else [slots[i] for i in picked],
    )
    out: list[str | None] = [None] * len(rows)
    for k, i in enumerate(picked):
        out[i] = asked.texts[k]
    return out


def _closed(ids: list[int], eos: int) -> list[int]:
    """Generated ids as history: ending with EOS (an answer cut by the budget is closed)."""
    return list(ids) if ids and ids[-1] == eos else [*ids, eos]


def follow_up_answers(predictor, images, eval_set, predictions, cfg) -> dict[str, list]:
    """The anomalous images' (``eval_set.label``) answers to the location and defect-type
    follow-ups and, with ``cfg.hierarchy.enabled``, to the description, impact and suggestion
    ones (level 4 of the hierarchical evaluation, with their own budget); normal images are asked
    none (None). ``cfg``: the evaluate parameters (``configs.evaluate``)."""
    from vmad_pipeline.evaluation.grading import LONG_KINDS, follow_up_kinds

    rows = eval_set["label"].to_numpy().astype(bool)
    long_budget = cfg.hierarchy.max_new_tokens
    return {
        kind: ask_after_detection(
            predictor,
            images,
            list(eval_set["category"]),
            predictions,
            rows,
            prompts.FOLLOW_UPS[kind][0],
            max_new_tokens=long_budget if kind in LONG_KINDS else cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
        )
        for kind in follow_up_kinds(cfg.hierarchy.enabled)
    }
