"""Predictor: image (+ object name) -> anomaly map, image score, answer."""

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
