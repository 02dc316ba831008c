"""A small training corpus with anomalies and the model config the engine tests train."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from helpers.models import VMAD_CFG
from vmad_pipeline import prompts
from vmad_pipeline.configs.model import LoraConfig

# No dropout: with it, ranks draw other masks than one process would (the one random source
# that is not a function of the sample).
MODEL = dataclasses.replace(VMAD_CFG, lora=LoraConfig(dropout=0.0))


def corpus(tmp_path, n: int = 4, classes=("part", "bolt")):
    """``n`` images per class, every other one anomalous (a bright square and its mask)."""
    from PIL import Image

    from vmad_pipeline.training.tokenizer import train_tokenizer

    rows = []
    for c in classes:
        for i in range(n):
            rng = np.random.default_rng([classes.index(c), i])  # the same in every process
            img = rng.integers(40, 90, (32, 32, 3), dtype=np.uint8)
            mask_path = ""
            if i % 2:
                img[8:16, 10:20] = 230
                mask = np.zeros((32, 32), np.uint8)
                mask[8:16, 10:20] = 255
                mask_path = f"{c}{i}_mask.png"
                Image.fromarray(mask).save(tmp_path / mask_path)
            Image.fromarray(img).save(tmp_path / f"{c}{i}.png")
            rows.append(
                {
                    "source": "s",
                    "category": c,
                    "image_path": f"{c}{i}.png",
                    "mask_path": mask_path,
                    "label": i % 2,
                    "defect_type": "scratch" if i % 2 else "",
                }
            )
    texts = []
    for c in classes:
        texts += [prompts.seg_prompt(c), prompts.vqa_prompt(c)]
    texts += [prompts.SEG_ANSWER, "Yes. A scratch.", "No. The part looks normal."]
    tok = train_tokenizer(texts * 3, vocab_size=300)
    qa = pd.DataFrame(columns=["source", "image_path"])
    return pd.DataFrame(rows), {"s": str(tmp_path)}, qa, tok


def trainable(model) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def train_config(tmp_path, **overrides):
    """A few steps of batch 4 with pasted anomalies, one thread, checkpoints under tmp_path."""
    from vmad_pipeline.configs import TrainConfig
    from vmad_pipeline.configs.train import CheckpointConfig

    base = dict(
        steps=6,
        batch_size=4,
        warmup_steps=1,
        progress=False,
        paste_prob=0.5,
        detect_paste_prob=0.5,
        num_threads=1,
        checkpoint=CheckpointConfig(
            dir=str(tmp_path / "ckpt"),
            every_steps=2,
            keep=2,
            expert_dir=str(tmp_path / "expert"),
        ),
    )
    return TrainConfig(**{**base, **overrides})


def fit(data, cfg, model=None):
    """``training.fit.fit_vmad`` of ``corpus`` data with ``model`` (``MODEL`` by default)."""
    from vmad_pipeline.training.fit import fit_vmad, make_job

    rows, roots, qa, tok = data
    return fit_vmad(make_job(rows, roots, qa, tok, cfg, model or MODEL))
