"""Training as one library call: the tokenizer, then the model built from its preset and trained
on the training rows. The train pipeline and the ablation both call these."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
from transformers import PreTrainedTokenizerBase

from vmad_pipeline.annotation.geometry import LOCATIONS
from vmad_pipeline.annotation.templates import normal_answer
from vmad_pipeline.configs import ModelConfig, TrainConfig
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.vmad import VmadModel
from vmad_pipeline.placement import peak_memory_mb, resolve_placement
from vmad_pipeline.training.data import ImageTable, answer_texts, conversation_texts
from vmad_pipeline.training.loop import seed_everything, train
from vmad_pipeline.training.tokenizer import train_tokenizer

log = logging.getLogger(__name__)


def qa_lookup(riad_qa: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """(source, image_path) -> the RIAD answers of that image."""
    return {(r["source"], r["image_path"]): r for r in riad_qa.to_dict("records")}


def fit_tokenizer(
    rows: pd.DataFrame, riad_qa: pd.DataFrame, cfg: TrainConfig, model_cfg: ModelConfig
) -> PreTrainedTokenizerBase:
    """The tiny preset's byte-level BPE tokenizer, trained on the training conversations only;
    for a pretrained preset, the checkpoint's tokenizer with [SEG] added."""
    if model_cfg.preset == "llava7b_sam_h":
        from vmad_pipeline.models.pretrained import load_llava_tokenizer

        return load_llava_tokenizer(model_cfg.weights.llava_dir)
    qa = qa_lookup(riad_qa)
    texts: list[str] = []
    for r in rows.itertuples():
        texts += conversation_texts(
            r.category, qa.get((r.source, r.image_path)), bool(r.label), normal_answer(r.category)
        )
    types = sorted({str(t) for t in rows.get("defect_type", []) if t})
    texts += answer_texts(types, LOCATIONS, cfg.seed)
    return train_tokenizer(texts, vocab_size=cfg.tokenizer_vocab)


@dataclass
class Trained:
    model: VmadModel
    tokenizer: PreTrainedTokenizerBase
    curves: dict[str, list[float]]  # per-step curves (training.loop.CURVES)
    summary: dict[str, Any]  # sizes, time, final loss


def fit_vmad(
    rows: pd.DataFrame,
    roots: dict[str, str],
    riad_qa: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    trained_on: dict | None = None,
) -> Trained:
    """Build the preset (its DSSL queues: one row per training class) and train it with LoRA on
    ``rows`` (every image of the training classes); ``trained_on`` (``splitting.training_record``)
    is kept on the model and saved with it."""
    seed_everything(cfg.seed)
    _, dtype = resolve_placement(cfg.device, cfg.precision)
    model = build_vmad(  # loaded in the training precision: a 7B checkpoint at half the memory
        model_cfg,
        tokenizer,
        seed=cfg.seed,
        train_classes=sorted(set(rows["category"])),
        dtype=dtype,
    )
    model.trained_on = dict(trained_on or {})
    table = ImageTable.load(rows, roots, model.config.sam.image_size, progress=cfg.progress)
    start = time.perf_counter()
    curves = train(model, tokenizer, table, qa_lookup(riad_qa), cfg)
    seconds = time.perf_counter() - start
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    summary = {
        "train_images": len(rows),
        "steps": cfg.steps,
        "train_seconds": round(seconds, 2),
        "images_per_s": round(cfg.steps * cfg.batch_size / seconds, 2),
        **peak_memory_mb(),
        "params_trainable": n_train,
        "params_total": n_total,
        "visual_tokens": model.num_image_tokens,
        "final_loss": curves["loss"][-1],
    }
    log.info(
        "trained %d steps in %.1f s (%d / %d parameters trainable)",
        cfg.steps,
        seconds,
        n_train,
        n_total,
    )
    return Trained(model=model, tokenizer=tokenizer, curves=curves, summary=summary)
