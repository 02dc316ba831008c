"""Predictor: images (+ object names) -> anomaly maps, image scores and answers.

Every entry point gets one through ``inference.service.Detector.for_model`` (the one factory), so
an image is scored the same way everywhere: by the
:class:`~vmad_pipeline.configs.evaluate.ScoreRule` it is given, through the one rule in
``evaluation.scores``. One pass per image over the detection question
(``models/generation.py``: one prefill) gives the anomaly map (drawn at [SEG]), the answer and
P(yes); free-form (e.g. multiple-choice) questions are answered by the same decoding.

Over 400 lines (494): one class whose entry points (predict, follow-ups, references, the image
against itself, answers, P(yes)) share the model, its tokenizer and placement and the one
generation pass; splitting it would pass those internals between files for a few lines' gain.
``predict`` is over 60 lines for the same reason: one loop that reads the map, P(yes), the
answer and its verdict of each batch from one generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from vmad_pipeline import prompts
from vmad_pipeline.configs.evaluate import ScoreRule
from vmad_pipeline.evaluation.predictions import Predictions
from vmad_pipeline.evaluation.scores import image_scores, map_max
from vmad_pipeline.images import to_model_inputs
from vmad_pipeline.inference.grounding import (
    drawn_regions,
    evidence_follow_ups,
    ground_text,
    has_type_slot,
    region_location,
    regrounded_ids,
    verdict_rows,
)
from vmad_pipeline.models.references import flipped, side_by_side, views
from vmad_pipeline.models.self_comparison import score_factors, self_factors, self_maps
from vmad_pipeline.models.type_head import TypeHead
from vmad_pipeline.models.vmad import VmadModel
from vmad_pipeline.placement import autocast, to_device
from vmad_pipeline.prompts import encode_prompt, encode_turns, pad_batch, yes_no_tokens


@dataclass
class Answers:
    texts: list[str]  # the generated answers (special tokens dropped, stripped)
    p_yes: np.ndarray | None = None  # N: P(yes) of the detection question, where computed


@dataclass
class FollowUps:
    answer_ids: list[list[int]]  # the generated tokens of each answer
    texts: list[str]  # as a user reads them
    seg_found: np.ndarray  # N bool: the answer said [SEG]
    maps: np.ndarray  # N x S x S: the map of that [SEG] (zeros where none was said)


class Predictor:
    """Wraps a trained model (eval mode) on its device, in its precision (autocast)."""

    def __init__(
        self,
        model: VmadModel,
        tokenizer: PreTrainedTokenizerFast,
        *,
        max_new_tokens: int = 24,
        rule: ScoreRule | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        ground: bool = True,
    ) -> None:
        """``max_new_tokens``: the decoding budget of an answer; ``device`` / ``dtype``: where and
        in which precision to run (the model is moved and cast there, and the maths runs under
        autocast); default: where the model is. ``ground``: the answers' location and type
        words read from the drawn mask and the type head (``inference.grounding``)."""
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        self.model, self.tokenizer, self.max_new_tokens = model.eval(), tokenizer, max_new_tokens
        self.rule = rule or ScoreRule()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.yes_no = yes_no_tokens(tokenizer, seg_first=model.config.seg_first)
        self.ground = ground
        self.type_head = TypeHead.from_json(getattr(model, "type_head", None))

    @property
    def image_size(self) -> int:
        """The side images are given at (the SAM input size)."""
        return self.model.config.sam.image_size

    def _batches(self, n: int, batch_size: int, desc: str, progress: bool):
        starts = range(0, n, batch_size)
        return tqdm(starts, desc=desc, disable=not progress, leave=False)

    def _run(
        self,
        images,
        texts,
        *,
        output_size: int,
        max_new_tokens: int,
        forced=(),
        regions=None,
        references=None,
    ):
        seqs = [encode_prompt(self.tokenizer, t, self.model.image_slots) for t in texts]
        return self._generate(
            images,
            seqs,
            output_size=output_size,
            max_new_tokens=max_new_tokens,
            forced=forced,
            region_masks=regions,
            references=references,
        )

    @torch.no_grad()
    def reference_features(
        self, images: torch.Tensor, *, batch_size: int = 16, flips: bool | None = None
    ) -> torch.Tensor:
        """The patch features the model compares references with (N x 3 x S x S uint8 -> N x C x
        g x g, float32 on the model's device); with the model's ``references.flips``, each image's
        flipped views side by side with it (N x C x g x 4g: ``models.references.side_by_side``;
        ``flips``: True / False instead of the model's setting)."""
        flips = self.model.config.references.flips if flips is None else flips
        images = flipped(images) if flips else images
        out = []
        for s in range(0, len(images), batch_size):
            clip, _ = to_model_inputs(
                images[s : s + batch_size], self.model.config.vision.image_size
            )
            with autocast(self.device, self.dtype):
                out.append(self.model.reference_features(clip.to(self.device)).float())
        return side_by_side(torch.cat(out), views(flips))

    @torch.no_grad()
    def _against_itself(self, images, memories, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the batch's anomaly maps, what its image scores are multiplied by) from the model's
        own maps (``own``, the [SEG] masks' sigmoid): with the model's ``self_comparison`` on,
        the images without references (no memory) are compared with themselves
        (``models.self_comparison``): a new array of maps multiplied by its factors, and each
        image's score factor; else ``own`` itself and ones."""
        cfg = self.model.config.self_comparison
        gate = np.ones(len(own))
        rows = [i for i in range(len(own)) if memories is None or memories[i] is None]
        if not cfg.enabled or not rows:
            return own, gate
        maps = own.copy()
        views = flipped(images[rows]) if cfg.flips else images[rows]
        clip, _ = to_model_inputs(views, self.model.config.vision.image_size)
        with autocast(self.device, self.dtype):
            distances = self_maps(self.model.vision, clip.to(self.device), cfg, maps.shape[-1])
        maps[rows] *= self_factors(distances, cfg)
        gate[rows] = score_factors(distances, cfg)
        return maps, gate

    @staticmethod
    def _drawn_maps(drawn: list[np.ndarray], maps: list[np.ndarray]) -> np.ndarray | None:
        """The [SEG]'s own maps of the batches, where :meth:`_against_itself` re-weighted any
        (None: ``maps`` are them)."""
        if all(m is d for m, d in zip(maps, drawn, strict=True)):
            return None
        return np.concatenate(drawn).astype(np.float32)

    def _generate(
        self,
        images,
        seqs,
        *,
        output_size,
        max_new_tokens,
        forced=(),
        prompt_masks=None,
        fallback=True,
        region_masks=None,
        references=None,
    ):
        ids, att = pad_batch(seqs, self.tokenizer.pad_token_id, left=True)
        clip, sam = to_model_inputs(images, self.model.config.vision.image_size)
        t = to_device({"ids": ids, "att": att, "clip": clip, "sam": sam}, self.device)
        if prompt_masks is not None:
            prompt_masks = torch.as_tensor(prompt_masks).to(self.device)
        if region_masks is not None:
            region_masks = torch.as_tensor(region_masks).float().to(self.device)
        with autocast(self.device, self.dtype):
            return self.model.predict(
                images_clip=t["clip"],
                images_sam=t["sam"],
                input_ids=t["ids"],
                attention_mask=t["att"],
                output_size=(output_size, output_size),
                max_new_tokens=max_new_tokens,
                forced=tuple(forced),
                prompt_masks=prompt_masks,
                fallback=fallback,
                region_masks=region_masks,
                references=references,
            )

    def _text(self, ids: list[list[int]]) -> list[str]:
        """Generated tokens as a user reads them: special tokens ([SEG], EOS) dropped, stripped."""
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def follow_up(
        self,
        images: torch.Tensor,
        histories: list[list[tuple[str, list[int]]]],
        questions: list[str],
        *,
        earlier_maps: np.ndarray | None,
        max_new_tokens: int,
        batch_size: int = 16,
        progress: bool = False,
        references: list[torch.Tensor | None] | None = None,
        slots: list[tuple] | None = None,
    ) -> FollowUps:
        """The next answer of a conversation about each image (N x 3 x S x S uint8):
        ``histories`` hold each one's earlier (question, generated ids) turns, the first a full
        prompt; ``earlier_maps`` (N x H x W probabilities) the maps of their first [SEG], which
        the tokens after it read as in training. A [SEG] in the new answer draws its map at S.
        ``references``: each image's normal references, as in :meth:`predict`; ``slots``: each
        image's (location, type, said yes) from its first answer (``Predictions.slots``), which
        the answer's words are grounded on. Grounded, the questions training asks are answered
        from that evidence whole, not generated (``inference.grounding.evidence_follow_ups``)."""
        n = len(images)
        if not (len(histories) == len(questions) == n):
            raise ValueError(f"{n} images, {len(histories)} histories, {len(questions)} questions")
        slots = slots if self.ground else None  # ungrounded: the LLM's own words
        known = {}  # grounded, the questions training asks are answered from the evidence
        if slots is not None:
            known = evidence_follow_ups(self.tokenizer, questions, slots, earlier_maps)
        ids = [known[i][0] if i in known else None for i in range(n)]
        texts = [known[i][1] if i in known else None for i in range(n)]
        said = np.zeros(n, bool)
        maps = np.zeros((n, self.image_size, self.image_size), np.float32)
        rest = [i for i in range(n) if i not in known]  # the LLM's to write
        for s in self._batches(len(rest), batch_size, "follow-up", progress):
            part = rest[s : s + batch_size]
            turns = [[*histories[i], (questions[i], None)] for i in part]
            seqs = [encode_turns(self.tokenizer, t, self.model.image_slots)[0] for t in turns]
            masks = None if earlier_maps is None else np.asarray(earlier_maps[part], np.float32)
            pred = self._generate(
                images[part],
                seqs,
                output_size=self.image_size,
                max_new_tokens=max_new_tokens,
                prompt_masks=masks,
                fallback=False,  # a follow-up's map only where it says [SEG]
                references=None if references is None else [references[i] for i in part],
            )
            part_ids, part_texts = list(pred.answer_ids), self._text(pred.answer_ids)
            if slots is not None:
                part_ids, part_texts = self._grounded(
                    part_ids, part_texts, [slots[i] for i in part]
                )
            found = pred.seg_found.cpu().numpy()
            for k, i in enumerate(part):
                ids[i], texts[i], said[i] = part_ids[k], part_texts[k], found[k]
            maps[part] = pred.mask_logits.sigmoid().float().cpu().numpy() * found[:, None, None]
        return FollowUps(answer_ids=ids, texts=texts, seg_found=said, maps=maps)

    def predict(
        self,
        images: torch.Tensor,
        categories: list[str],
        *,
        output_size: int,
        batch_size: int = 16,
        progress: bool = False,
        region_masks: np.ndarray | torch.Tensor | None = None,
        references: list[torch.Tensor | None] | None = None,
        max_new_tokens: int | None = None,
        thresholds: list[float | None] | None = None,
    ) -> Predictions:
        """Map, score and answer for each image (N x 3 x S x S uint8 at the SAM input size; one
        object name each), from one pass over the detection question: the tokens "Yes" and "No"
        answers share are fed first (e.g. " [SEG] "), P(yes) = P(Yes) / (P(Yes) + P(No)) at the
        next step, then the answer goes on greedily. ``region_masks`` (N x H x W in [0, 1]): the
        regions the model's region tokens read (None: its predicted ones). ``references``: one
        memory of normal patches per image (``inference.references``; None: zero-shot).
        ``max_new_tokens``: the answer's budget (default: the predictor's); the map and P(yes)
        come from the forced prefix and the first free step, so the scores do not depend on it.
        ``thresholds``: each image's decision threshold (the references-only one, zero-shot the
        model's calibrated one; None: none); where given, the answer says "Yes" exactly when the
        score reaches it, as the decision does (``inference.grounding.verdict_rows``), the rest
        written after that word."""
        if references is not None and len(references) != len(images):
            raise ValueError(f"{len(images)} images but {len(references)} reference memories")
        if thresholds is not None and len(thresholds) != len(images):
            raise ValueError(f"{len(images)} images but {len(thresholds)} thresholds")
        maps, answers, found, p_yes, raw, sig, expert = [], [], [], [], [], [], []
        gates, scores = [], []  # each image's score factor (the image against itself), score
        drawn = []  # the [SEG]'s own maps, where the self-comparison re-weights ``maps``
        distance = []  # each image's median patch distance to its references
        where, what = [], []  # the grounding's slots (inference.grounding)
        for s in self._batches(len(images), batch_size, "predict", progress):
            part = slice(s, s + batch_size)
            texts = [prompts.vqa_prompt(c) for c in categories[part]]
            regions = None if region_masks is None else region_masks[part]
            memories = None if references is None else references[part]
            pred = self._run(
                images[part],
                texts,
                output_size=output_size,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                forced=self.yes_no.prefix,
                regions=regions,
                references=memories,
            )
            if pred.significance is not None:
                sig.append(pred.significance.float().cpu().numpy())
                expert.append(pred.expert_score.float().cpu().numpy())
            pair = pred.free_logits[:, [self.yes_no.yes, self.yes_no.no]].float()
            p_yes.append(pair.softmax(-1)[:, 0].cpu().numpy())
            # the words read the mask the [SEG] drew, the map and score also the image itself
            own = pred.mask_logits.sigmoid().float().cpu().numpy()
            weighted, gate = self._against_itself(images[part], memories, own)
            maps.append(weighted)
            gates.append(gate)
            drawn.append(own)
            rule = image_scores(map_max(weighted), p_yes[-1].astype(np.float64), self.rule)
            scores.append(gate * rule)
            if references is not None and pred.reference_maps is not None:
                far = pred.reference_maps.flatten(1).float().median(1).values
                distance.append(far.cpu().numpy())
            ids = list(pred.answer_ids)
            if thresholds is not None:
                self._say_verdicts(
                    ids,
                    scores[-1],
                    thresholds[part],
                    images[part],
                    texts,
                    output_size=output_size,
                    max_new_tokens=max_new_tokens or self.max_new_tokens,
                    regions=regions,
                    references=memories,
                )
            texts = self._text(ids)
            if self.ground:
                places, names = self._slots(images[part], own, texts, memories)
                where += places
                what += names
                ids, texts = self._grounded(ids, texts, list(zip(places, names, strict=True)))
            answers += texts
            raw += ids  # the forced prefix included
            found.append(pred.seg_found.cpu().numpy())
        empty = np.zeros((0, output_size, output_size), np.float32)
        maps_arr = np.concatenate(maps).astype(np.float32) if maps else empty
        p = np.concatenate(p_yes).astype(np.float64) if p_yes else np.zeros(0)
        maxima = map_max(maps_arr)
        return Predictions(
            maps=maps_arr,
            map_max=maxima,
            p_yes=p,
            scores=np.concatenate(scores) if scores else np.zeros(0),
            answers=answers,
            seg_found=np.concatenate(found) if found else np.zeros(0, bool),
            answer_ids=raw,
            significance=np.concatenate(sig).astype(np.float32) if sig else None,
            expert_scores=np.concatenate(expert).astype(np.float64) if expert else None,
            reference_distance=np.concatenate(distance).astype(np.float64) if distance else None,
            drawn_maps=self._drawn_maps(drawn, maps),
            score_factors=np.concatenate(gates) if gates else None,
            drawn_locations=where if self.ground else None,
            named_types=what if self.ground and self.type_head is not None else None,
        )

    def _say_verdicts(self, ids, scores, cuts, images, texts, *, regions, references, **run):
        """``ids`` (one batch's answers) with each answer whose Yes / No contradicts its decision
        (``inference.grounding.verdict_rows``) written again from the word the decision says, in
        place; ``run``: ``output_size`` and ``max_new_tokens``, as the batch was run."""
        y, budget = self.yes_no, max(1, run.pop("max_new_tokens") - 1)  # the word is one of it
        for token, rows in verdict_rows(ids, len(y.prefix), scores, cuts, y.yes, y.no).items():
            again = self._run(
                images[rows],
                [texts[i] for i in rows],
                max_new_tokens=budget,
                forced=(*y.prefix, token),
                regions=None if regions is None else regions[rows],
                references=None if references is None else [references[i] for i in rows],
                **run,
            )
            for k, i in enumerate(rows):
                ids[i] = list(again.answer_ids[k])

    def _slots(self, images: torch.Tensor, maps: np.ndarray, texts: list[str], references=None):
        """Of each image (uint8, the SAM input), its map and its answer: the drawn mask's
        location, and the type head's name for it (None: abstains; False: no head, or an answer
        that names no defect, "No" or a bare "Yes", where it is not computed); an image with
        references (a memory in ``references``) is named by the head's gated rule."""
        regions = drawn_regions(maps)
        where = [region_location(r) for r in regions]
        what: list = [False] * len(where)
        rows = [i for i, t in enumerate(texts) if has_type_slot(t)]
        if self.type_head is not None and rows:
            gated = [references is not None and references[i] is not None for i in rows]
            desc = self._descriptors(images[rows], regions[rows])
            named, _ = self.type_head.classify(desc, gated=gated)
            for k, i in enumerate(rows):
                what[i] = named[k]
        return where, what

    def type_probe(self, images: torch.Tensor, masks, *, batch_size: int = 16) -> list:
        """The type head's most likely name for what is inside each given mask, never
        abstaining (the true masks: what the features know, reported apart); [] without a
        head."""
        if self.type_head is None:
            return []
        named = []
        for s in range(0, len(images), batch_size):
            part = slice(s, s + batch_size)
            desc = self._descriptors(images[part], masks[part])
            named += self.type_head.classify(desc, abstain=False)[0]
        return named

    def _descriptors(self, images: torch.Tensor, masks) -> np.ndarray:
        """The type head's region descriptors of images (uint8, the SAM input) and masks."""
        clip, _ = to_model_inputs(images, self.model.config.vision.image_size)
        with autocast(self.device, self.dtype):
            return self.type_head.descriptors(self.model.vision, clip.to(self.device), masks)

    def _grounded(self, ids: list[list[int]], texts: list[str], slots) -> tuple[list, list]:
        """The answers with their location and type words set from ``slots`` ((location, type,
        said yes) each: ``inference.grounding.ground_text``), their tokens likewise."""
        out_ids, out_texts = [], []
        for one, text, (where, what, *_) in zip(ids, texts, slots, strict=True):
            grounded = ground_text(text, where, what)
            out_ids.append(regrounded_ids(self.tokenizer, list(one), text, grounded))
            out_texts.append(grounded)
        return out_ids, out_texts

    def region_settings(
        self,
        images: torch.Tensor,
        categories: list[str],
        truth: np.ndarray | torch.Tensor,
        *,
        batch_size: int = 16,
        progress: bool = False,
    ) -> dict[str, dict[str, list[str]]]:
        """The detection answers again with the region tokens reading no region and the true
        one (``truth``: N x H x W masks at any size), for the evaluation's three settings (the
        predicted region is :meth:`predict`'s own)."""
        truth = torch.as_tensor(np.asarray(truth)).float()
        out = {}
        for name, regions in (("no_region", torch.zeros_like(truth)), ("oracle_region", truth)):
            pred = self.predict(
                images,
                categories,
                output_size=8,  # the answers are what is graded
                batch_size=batch_size,
                progress=progress,
                region_masks=regions,
            )
            out[name] = {"answers": pred.answers}
        return out

    def answer(
        self,
        images: torch.Tensor,
        prompt_texts: list[str],
        *,
        max_new_tokens: int,
        batch_size: int = 16,
        progress: bool = False,
        references: list[torch.Tensor | None] | None = None,
    ) -> Answers:
        """Greedy answers to one prompt per image (a full prompt, e.g. ``prompts.user_turn(q)``),
        by the same decoding (a [SEG] in an answer draws its mask, and its evidence is read);
        ``references``: each image's normal references, as in :meth:`predict`."""
        if len(images) != len(prompt_texts):
            raise ValueError(f"got {len(images)} images but {len(prompt_texts)} prompts")
        texts: list[str] = []
        for s in self._batches(len(images), batch_size, "answer", progress):
            pred = self._run(
                images[s : s + batch_size],
                prompt_texts[s : s + batch_size],
                output_size=self.image_size,
                max_new_tokens=max_new_tokens,
                references=None if references is None else references[s : s + batch_size],
            )
            texts += self._text(pred.answer_ids)
        return Answers(texts=texts)

    def p_yes(
        self, images: torch.Tensor, categories: list[str], *, batch_size: int = 16
    ) -> np.ndarray:
        """P(yes) of the detection question for each image (:meth:`predict`'s)."""
        return self.predict(images, categories, output_size=8, batch_size=batch_size).p_yes
