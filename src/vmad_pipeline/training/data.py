"""Images, masks and conversations as tensors for training and inference."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from vmad_pipeline.datasets.manifest import image_file, mask_file
from vmad_pipeline.training import prompts

log = logging.getLogger(__name__)
IGNORE = -100  # label of positions that carry no loss (prompt, image, padding)


def load_rgb(path: str | Path, size: int) -> np.ndarray:
    """An image resized to size x size (bilinear), uint8 H x W x 3."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB").resize((size, size), Image.BILINEAR))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def load_mask(path: str | Path | None, size: int) -> np.ndarray:
    """A binary mask (positive = value > 0) resized with nearest neighbour; zeros if no path."""
    if not path:
        return np.zeros((size, size), dtype=np.uint8)
    try:
        with Image.open(path) as im:
            return (np.asarray(im.convert("L").resize((size, size), Image.NEAREST)) > 0).astype(
                np.uint8
            )
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read mask {path}: {err}") from err


@dataclass
class ImageTable:
    """Every image of a manifest slice in memory at the SAM input size."""

    rows: pd.DataFrame  # the manifest rows, index reset
    images: torch.Tensor  # N x 3 x S x S uint8
    masks: torch.Tensor  # N x S x S uint8 (0/1)

    @classmethod
    def load(
        cls, rows: pd.DataFrame, roots: dict[str, str], size: int, *, progress: bool = True
    ) -> ImageTable:
        rows = rows.reset_index(drop=True)
        n = len(rows)
        images = torch.empty((n, 3, size, size), dtype=torch.uint8)
        masks = torch.empty((n, size, size), dtype=torch.uint8)
        it = tqdm(rows.itertuples(), total=n, desc="load images", disable=not progress, leave=False)
        for i, r in enumerate(it):
            images[i] = torch.from_numpy(
                load_rgb(image_file(roots, r.source, r.image_path), size)
            ).permute(2, 0, 1)
            masks[i] = torch.from_numpy(load_mask(mask_file(roots, r.source, r.mask_path), size))
        return cls(rows=rows, images=images, masks=masks)


def to_model_inputs(images: torch.Tensor, clip_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 B x 3 x S x S -> (CLIP input B x 3 x c x c, SAM input B x 3 x S x S), both in [0, 1]."""
    sam = images.float() / 255.0
    clip = F.interpolate(
        sam, (clip_size, clip_size), mode="bilinear", align_corners=False, antialias=True
    )
    return clip, sam


def expand_image(text: str, num_image_tokens: int) -> str:
    return text.replace(prompts.IMAGE_TOKEN, prompts.IMAGE_TOKEN * num_image_tokens)


def encode_conversation(
    tokenizer: PreTrainedTokenizerFast, prompt: str, answer: str, num_image_tokens: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels: loss only on the answer (and its end-of-sequence token)."""
    p = [tokenizer.bos_token_id] + tokenizer.encode(
        expand_image(prompt, num_image_tokens), add_special_tokens=False
    )
    a = tokenizer.encode(" " + answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    return p + a, [IGNORE] * len(p) + a


def encode_prompt(
    tokenizer: PreTrainedTokenizerFast, prompt: str, num_image_tokens: int
) -> list[int]:
    return [tokenizer.bos_token_id] + tokenizer.encode(
        expand_image(prompt, num_image_tokens), add_special_tokens=False
    )


def pad_batch(
    seqs: Sequence[list[int]], pad_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence; returns (ids, attention_mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s)
        att[i, sl] = 1
    return ids, att


def conversation_texts(
    category: str, qa: dict | None, anomalous: bool, normal_text: str
) -> list[str]:
    """Every prompt and answer the trainer can produce for one image (tokenizer corpus)."""
    texts = [prompts.seg_prompt(category), prompts.vqa_prompt(category), prompts.SEG_ANSWER]
    for kind in prompts.ANSWER_KINDS:
        texts.append(prompts.seg_answer_prompt(category, kind))
        texts.append(qa[kind] if (anomalous and qa) else normal_text)
    return texts
