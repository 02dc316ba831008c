"""Predictor: images (+ object names) -> anomaly maps, image scores and answers.

One object serves evaluation, the MLflow pyfunc and the ablation, so an image is scored the same
way everywhere: by the :class:`~vmad_pipeline.configs.evaluate.ScoreRule` it is given, through
the one rule in ``evaluation.scores``. It also answers the detection question with P(yes), and
free-form (e.g. multiple-choice) questions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from vmad_pipeline import prompts
from vmad_pipeline.configs.evaluate import ScoreRule
from vmad_pipeline.evaluation.scores import image_scores, map_max
from vmad_pipeline.images import to_model_inputs
from vmad_pipeline.models.vmad import VmadModel
from vmad_pipeline.placement import autocast
from vmad_pipeline.prompts import encode_prompt, pad_batch, yes_no_tokens


@dataclass
class Predictions:
    maps: np.ndarray  # N x H x W float32: sigmoid of the mask logits (anomaly map)
    map_max: np.ndarray  # N: max of each map
    p_yes: np.ndarray | None  # N: P(yes) of the detection question, where computed
    scores: np.ndarray  # N: image score by the predictor's ScoreRule
    answers: list[str]  # the answers holding [SEG] (segmentation prompt)
    detection_answers: list[str] | None  # greedy answers to the detection question, if asked
    seg_found: np.ndarray  # N bool: [SEG] was emitted (else the fallback state was used)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Answers:
    texts: list[str]  # the generated answers (special tokens dropped, stripped)
    p_yes: np.ndarray | None = None  # N: P(yes) of the detection question, where computed


class Predictor:
    """Wraps a trained model (eval mode) on its device, in its precision (autocast)."""

    def __init__(
        self,
        model: VmadModel,
        tokenizer: PreTrainedTokenizerFast,
        *,
        max_new_tokens: int = 8,
        rule: ScoreRule | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """``device`` / ``dtype``: where and in which precision to run (the model is moved and
        cast there, and the maths runs under autocast); default: where the model is."""
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        self.model, self.tokenizer, self.max_new_tokens = model.eval(), tokenizer, max_new_tokens
        self.rule = rule or ScoreRule()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    @property
    def image_size(self) -> int:
        """The side images are given at (the SAM input size)."""
        return self.model.config.sam.image_size

    def _inputs(self, images: torch.Tensor, texts: list[str], extra: tuple[int, ...] = ()):
        seqs = [
            encode_prompt(self.tokenizer, t, self.model.num_image_tokens) + list(extra)
            for t in texts
        ]
        ids, att = pad_batch(seqs, self.tokenizer.pad_token_id, left=True)
        clip, sam = to_model_inputs(images, self.model.config.vision.image_size)
        return ids.to(self.device), att.to(self.device), clip.to(self.device), sam.to(self.device)

    def _batches(self, n: int, batch_size: int, desc: str, progress: bool):
        starts = range(0, n, batch_size)
        return tqdm(starts, desc=desc, disable=not progress, leave=False)

    @torch.no_grad()
    def segment(
        self,
        images: torch.Tensor,
        categories: list[str],
        *,
        output_size: int,
        batch_size: int = 16,
        progress: bool = False,
    ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(maps N x H x W, answers, seg_found) for the segmentation prompt; images: N x 3 x S x S
        uint8 at the SAM input size; one object name per image."""
        maps, answers, found = [], [], []
        for s in self._batches(len(images), batch_size, "predict", progress):
            texts = [prompts.seg_prompt(c) for c in categories[s : s + batch_size]]
            ids, att, clip, sam = self._inputs(images[s : s + batch_size], texts)
            with autocast(self.device, self.dtype):
                pred = self.model.predict(
                    images_clip=clip,
                    images_sam=sam,
                    input_ids=ids,
                    attention_mask=att,
                    output_size=(output_size, output_size),
                    max_new_tokens=self.max_new_tokens,
                )
            maps.append(pred.mask_logits.sigmoid().float().cpu().numpy())
            answers += self.tokenizer.batch_decode(pred.answer_ids, skip_special_tokens=False)
            found.append(pred.seg_found.cpu().numpy())
        maps_arr = (
            np.concatenate(maps) if maps else np.zeros((0, output_size, output_size), np.float32)
        )
        seg_found = np.concatenate(found) if found else np.zeros(0, bool)
        return maps_arr.astype(np.float32), [a.strip() for a in answers], seg_found

    def predict(
        self,
        images: torch.Tensor,
        categories: list[str],
        *,
        output_size: int,
        batch_size: int = 16,
        progress: bool = False,
        detection_tokens: int = 0,
    ) -> Predictions:
        """Maps, scores (the predictor's rule) and answers. P(yes) is computed when the rule needs
        it or when ``detection_tokens`` > 0, which also answers the detection question greedily
        with that budget."""
        maps, answers, seg_found = self.segment(
            images, categories, output_size=output_size, batch_size=batch_size, progress=progress
        )
        detection = None
        if detection_tokens > 0:
            detection = self.detect(
                images,
                categories,
                max_new_tokens=detection_tokens,
                batch_size=batch_size,
                progress=progress,
            )
            p_yes = detection.p_yes
        elif self.rule.needs_p_yes:
            p_yes = self.p_yes(images, categories, batch_size=batch_size, progress=progress)
        else:
            p_yes = None
        maxima = map_max(maps)
        return Predictions(
            maps=maps,
            map_max=maxima,
            p_yes=p_yes,
            scores=image_scores(maxima, p_yes, self.rule),
            answers=answers,
            detection_answers=None if detection is None else detection.texts,
            seg_found=seg_found,
        )

    @torch.no_grad()
    def answer(
        self,
        images: torch.Tensor,
        prompt_texts: list[str],
        *,
        max_new_tokens: int,
        batch_size: int = 16,
        progress: bool = False,
    ) -> Answers:
        """Greedy answers to one prompt per image (a full prompt, e.g. ``prompts.user_turn(q)``);
        images: N x 3 x S x S uint8 (only the vision tower reads them)."""
        if len(images) != len(prompt_texts):
            raise ValueError(f"got {len(images)} images but {len(prompt_texts)} prompts")
        texts: list[str] = []
        for s in self._batches(len(images), batch_size, "answer", progress):
            ids, att, clip, _ = self._inputs(
                images[s : s + batch_size], prompt_texts[s : s + batch_size]
            )
            with autocast(self.device, self.dtype):
                embeds, _ = self.model.embed_inputs(ids, clip)
                generated = self.model.llm.generate(
                    inputs_embeds=embeds,
                    attention_mask=att,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.model.pad_token_id,
                    eos_token_id=self.model.eos_token_id,
                )  # (B, G): only the new tokens when generating from embeddings
            decoded = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            texts += [t.strip() for t in decoded]
        return Answers(texts=texts)

    @torch.no_grad()
    def p_yes(
        self,
        images: torch.Tensor,
        categories: list[str],
        *,
        batch_size: int = 16,
        progress: bool = False,
    ) -> np.ndarray:
        """P(yes) for the detection question (``prompts.vqa_prompt``): one teacher-forced forward
        over the prompt (plus the answer tokens "Yes" and "No" share, ``prompts.yes_no_tokens``),
        then P(yes) = softmax over the two logits of the first "Yes" and "No" tokens at the last
        position, i.e. P(Yes) / (P(Yes) + P(No)) of the next-token distribution."""
        tokens = yes_no_tokens(self.tokenizer)
        out: list[np.ndarray] = []
        for s in self._batches(len(images), batch_size, "P(yes)", progress):
            texts = [prompts.vqa_prompt(c) for c in categories[s : s + batch_size]]
            ids, att, clip, _ = self._inputs(images[s : s + batch_size], texts, tokens.prefix)
            positions = (att.cumsum(1) - 1).clamp(min=0)  # left padding: real tokens from 0
            with autocast(self.device, self.dtype):
                embeds, _ = self.model.embed_inputs(ids, clip)
                logits = self.model.llm(
                    inputs_embeds=embeds,
                    attention_mask=att,
                    position_ids=positions,
                    logits_to_keep=1,
                ).logits[:, -1]  # (B, V)
            pair = logits[:, [tokens.yes, tokens.no]].float()
            out.append(pair.softmax(-1)[:, 0].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def detect(
        self,
        images: torch.Tensor,
        categories: list[str],
        *,
        max_new_tokens: int,
        batch_size: int = 16,
        progress: bool = False,
    ) -> Answers:
        """The detection question the model is trained on (``prompts.vqa_prompt``): the greedy
        answers and P(yes) (:meth:`p_yes`)."""
        answers = self.answer(
            images,
            [prompts.vqa_prompt(c) for c in categories],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )
        answers.p_yes = self.p_yes(images, categories, batch_size=batch_size, progress=progress)
        return answers
