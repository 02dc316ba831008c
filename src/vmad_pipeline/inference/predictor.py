"""Predictor: image (+ object name) -> anomaly map, image score, answer; and the answer to the
detection question with P(yes), and answers to free-form (e.g. multiple-choice) questions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from vmad_pipeline.models.vmad import VmadModel
from vmad_pipeline.training import prompts
from vmad_pipeline.training.data import encode_prompt, pad_batch, to_model_inputs


@dataclass
class Predictions:
    maps: np.ndarray  # N x H x W float32: sigmoid of the mask logits (anomaly map)
    scores: np.ndarray  # N: image score = max of the map (method.md section 6)
    answers: list[str]  # the generated answers
    seg_found: np.ndarray  # N bool: [SEG] was emitted (else the fallback state was used)


@dataclass
class Answers:
    texts: list[str]  # the generated answers (special tokens dropped, stripped)
    p_yes: np.ndarray | None = None  # N: P(yes) of the detection question, where computed


@dataclass(frozen=True)
class YesNoTokens:
    """Where "Yes" and "No" part ways as answers: both are encoded as the trainer encodes an
    answer (``" " + answer``, ``training.data.encode_conversation``); ``prefix`` holds the
    tokens they share (often none; a lone space token with byte-level BPE tokenizers trained
    without "ĠYes"), ``yes`` / ``no`` the first token of each after it. Where a word is several
    tokens ("Y", "es"), its first token stands for it."""

    prefix: tuple[int, ...]
    yes: int
    no: int


def yes_no_tokens(tokenizer: PreTrainedTokenizerFast) -> YesNoTokens:
    """The :class:`YesNoTokens` of the detection answers ``prompts.vqa_answer`` starts with."""
    yes = tokenizer.encode(" " + prompts.vqa_answer(True, "").strip(), add_special_tokens=False)
    no = tokenizer.encode(" " + prompts.vqa_answer(False, "").strip(), add_special_tokens=False)
    k = 0
    while k < min(len(yes), len(no)) and yes[k] == no[k]:
        k += 1
    if k == min(len(yes), len(no)):
        raise ValueError(
            f"the tokenizer encodes the answers 'Yes.' and 'No.' so that one is a prefix of the "
            f"other ({tokenizer.convert_ids_to_tokens(yes)} vs "
            f"{tokenizer.convert_ids_to_tokens(no)}); P(yes) is undefined for it"
        )
    return YesNoTokens(prefix=tuple(yes[:k]), yes=yes[k], no=no[k])


class Predictor:
    def __init__(
        self, model: VmadModel, tokenizer: PreTrainedTokenizerFast, *, max_new_tokens: int = 8
    ) -> None:
        self.model, self.tokenizer, self.max_new_tokens = model.eval(), tokenizer, max_new_tokens

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        categories: list[str],
        *,
        output_size: int,
        batch_size: int = 16,
        progress: bool = False,
    ) -> Predictions:
        """images: N x 3 x S x S uint8 at the SAM input size; one object name per image."""
        clip_size = self.model.config.vision.image_size
        device = next(self.model.parameters()).device
        maps, answers, found = [], [], []
        starts = range(0, len(images), batch_size)
        for s in tqdm(starts, desc="predict", disable=not progress, leave=False):
            chunk = images[s : s + batch_size]
            seqs = [
                encode_prompt(self.tokenizer, prompts.seg_prompt(c), self.model.num_image_tokens)
                for c in categories[s : s + batch_size]
            ]
            ids, att = pad_batch(seqs, self.tokenizer.pad_token_id, left=True)
            clip, sam = to_model_inputs(chunk, clip_size)
            pred = self.model.predict(
                images_clip=clip.to(device),
                images_sam=sam.to(device),
                input_ids=ids.to(device),
                attention_mask=att.to(device),
                output_size=(output_size, output_size),
                max_new_tokens=self.max_new_tokens,
            )
            maps.append(pred.mask_logits.sigmoid().float().cpu().numpy())
            answers += self.tokenizer.batch_decode(pred.answer_ids, skip_special_tokens=False)
            found.append(pred.seg_found.cpu().numpy())
        maps_arr = (
            np.concatenate(maps) if maps else np.zeros((0, output_size, output_size), np.float32)
        )
        return Predictions(
            maps=maps_arr.astype(np.float32),
            scores=maps_arr.reshape(len(maps_arr), -1).max(1) if len(maps_arr) else np.zeros(0),
            answers=[a.strip() for a in answers],
            seg_found=np.concatenate(found) if found else np.zeros(0, bool),
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
        clip_size = self.model.config.vision.image_size
        device = next(self.model.parameters()).device
        texts: list[str] = []
        starts = range(0, len(images), batch_size)
        for s in tqdm(starts, desc="answer", disable=not progress, leave=False):
            seqs = [
                encode_prompt(self.tokenizer, text, self.model.num_image_tokens)
                for text in prompt_texts[s : s + batch_size]
            ]
            ids, att = pad_batch(seqs, self.tokenizer.pad_token_id, left=True)
            clip, _ = to_model_inputs(images[s : s + batch_size], clip_size)
            embeds, _ = self.model.embed_inputs(ids.to(device), clip.to(device))
            generated = self.model.llm.generate(
                inputs_embeds=embeds,
                attention_mask=att.to(device),
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
        over the prompt (plus the answer tokens "Yes" and "No" share, :func:`yes_no_tokens`),
        then P(yes) = softmax over the two logits of the first "Yes" and "No" tokens at the last
        position, i.e. P(Yes) / (P(Yes) + P(No)) of the next-token distribution."""
        tokens = yes_no_tokens(self.tokenizer)
        clip_size = self.model.config.vision.image_size
        device = next(self.model.parameters()).device
        out: list[np.ndarray] = []
        starts = range(0, len(images), batch_size)
        for s in tqdm(starts, desc="P(yes)", disable=not progress, leave=False):
            seqs = [
                encode_prompt(self.tokenizer, prompts.vqa_prompt(c), self.model.num_image_tokens)
                + list(tokens.prefix)
                for c in categories[s : s + batch_size]
            ]
            ids, att = pad_batch(seqs, self.tokenizer.pad_token_id, left=True)
            clip, _ = to_model_inputs(images[s : s + batch_size], clip_size)
            embeds, _ = self.model.embed_inputs(ids.to(device), clip.to(device))
            att = att.to(device)
            positions = (att.cumsum(1) - 1).clamp(min=0)  # left padding: real tokens from 0
            logits = self.model.llm(
                inputs_embeds=embeds, attention_mask=att, position_ids=positions, logits_to_keep=1
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
