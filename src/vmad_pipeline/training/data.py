"""Manifest rows as training tensors, and the texts the tokenizer is trained on."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from vmad_pipeline import prompts
from vmad_pipeline.datasets.manifest import row_files
from vmad_pipeline.images import load_batch


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
        images, masks = load_batch(*row_files(rows, roots), size, progress=progress)
        return cls(rows=rows, images=images, masks=masks)


def conversation_texts(
    category: str, qa: dict | None, anomalous: bool, normal_text: str
) -> list[str]:
    """Every prompt and stored answer the trainer can produce for one image (tokenizer corpus)."""
    texts = [prompts.seg_prompt(category), prompts.vqa_prompt(category), prompts.SEG_ANSWER]
    for kind in prompts.ANSWER_KINDS:
        texts.append(prompts.seg_answer_prompt(category, kind))
        texts.append(qa[kind] if (anomalous and qa) else normal_text)
    return texts


def answer_texts(defect_types: list[str], locations: tuple[str, ...], seed: int) -> list[str]:
    """The detection answers the trainer writes (every defect type and location, yes and no), and
    questions about made-up names: the tokenizer learns sub-word pieces to spell any name."""
    import random

    rng = random.Random(seed)
    texts = [prompts.detection_answer(anomalous=False)]
    for location in locations:
        texts.append(prompts.detection_answer(anomalous=True, location=location))
        texts += [
            prompts.detection_answer(anomalous=True, defect=d, location=location)
            for d in defect_types
        ]
    texts += [prompts.vqa_prompt(prompts.random_name(rng)) for _ in range(400)]
    return texts
