"""Train: the tokenizer, the LoRA training of VMAD, and the MLflow pyfunc to register."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import pandas as pd

from vmad_pipeline.configs import ModelConfig, TrainConfig, WeightsConfig, from_dict

log = logging.getLogger(__name__)


def parse_train_params(
    params: dict[str, Any], weights: dict[str, Any] | None = None
) -> tuple[TrainConfig, ModelConfig]:
    """``train`` parameters, with the local weight paths (``weights``) folded into the model."""
    rest = {k: v for k, v in params.items() if k != "model"}
    model = from_dict(ModelConfig, params.get("model"), "train.model")
    model = dataclasses.replace(model, weights=from_dict(WeightsConfig, weights, "weights"))
    return from_dict(TrainConfig, rest, "train"), model


def training_rows(manifest: pd.DataFrame, splits: dict[str, Any]) -> pd.DataFrame:
    """Every image of the training classes (their own train and test folders alike), leak-checked."""
    from vmad_pipeline.splitting import split_rows

    return split_rows(manifest, splits)[0]


def qa_lookup(riad_qa: pd.DataFrame) -> dict[tuple[str, str], dict]:
    return {(r["source"], r["image_path"]): r for r in riad_qa.to_dict("records")}


def fit_tokenizer(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    riad_qa: pd.DataFrame,
    params: dict[str, Any],
    weights: dict[str, Any],
):
    """The tiny preset's byte-level BPE tokenizer, trained on the training conversations only;
    for a pretrained preset, the checkpoint's tokenizer with [SEG] added."""
    from vmad_pipeline.annotation.templates import normal_answer
    from vmad_pipeline.models.pretrained import load_llava_tokenizer
    from vmad_pipeline.training.data import conversation_texts
    from vmad_pipeline.training.tokenizer import train_tokenizer

    cfg, model_cfg = parse_train_params(params, weights)
    if model_cfg.preset != "tiny":
        return load_llava_tokenizer(model_cfg.weights.llava_dir)
    qa = qa_lookup(riad_qa)
    texts: list[str] = []
    for r in training_rows(manifest, splits).itertuples():
        texts += conversation_texts(
            r.category, qa.get((r.source, r.image_path)), bool(r.label), normal_answer(r.category)
        )
    return train_tokenizer(texts, vocab_size=cfg.tokenizer_vocab)


def train_model(
    manifest: pd.DataFrame,
    splits: dict[str, Any],
    roots: dict[str, str],
    riad_qa: pd.DataFrame,
    tokenizer,
    params: dict[str, Any],
    weights: dict[str, Any],
) -> tuple[tuple, dict[str, list[float]], pd.DataFrame, dict[str, Any]]:
    """Build the preset, train it with LoRA.

    Returns (model, tokenizer), the per-step curves (for MLflow and as a table for DVC plots)
    and a summary.
    """
    from vmad_pipeline.annotation.templates import normal_answer
    from vmad_pipeline.models.build import build_vmad
    from vmad_pipeline.training.data import ImageTable
    from vmad_pipeline.training.device import resolve_placement
    from vmad_pipeline.training.loop import seed_everything, train

    cfg, model_cfg = parse_train_params(params, weights)
    seed_everything(cfg.seed)
    rows = training_rows(manifest, splits)
    _, dtype = resolve_placement(cfg.device, cfg.precision)
    model = build_vmad(  # loaded in the training precision: a 7B checkpoint at half the memory
        model_cfg,
        tokenizer,
        seed=cfg.seed,
        train_classes=sorted(set(rows["category"])),
        dtype=dtype,
    )
    table = ImageTable.load(rows, roots, model.config.sam.image_size, progress=cfg.progress)
    start = time.perf_counter()
    curves = train(model, tokenizer, table, qa_lookup(riad_qa), normal_answer, cfg)
    seconds = time.perf_counter() - start
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    summary = {
        "train_images": len(rows),
        "train_classes": list(splits["train_classes"]),
        "steps": cfg.steps,
        "train_seconds": round(seconds, 2),
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
    table = pd.DataFrame({"step": range(1, cfg.steps + 1), **curves})
    return (model, tokenizer), curves, table, summary


def package_model(trained: tuple) -> Any:
    """The MLflow pyfunc (its checkpoint artifact path comes from the catalog's save_args)."""
    from vmad_pipeline.inference.pyfunc import VmadPyfunc

    return VmadPyfunc()
