"""The training loop as plain functions: AdamW, warm-up then cosine, gradient clipping."""

from __future__ import annotations

import logging
import random
import time

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast, get_cosine_schedule_with_warmup

from vmad_pipeline.configs import TrainConfig
from vmad_pipeline.images import to_model_inputs
from vmad_pipeline.models.llm import quiet_peft
from vmad_pipeline.models.vmad import VmadModel, VmadOutput
from vmad_pipeline.placement import autocast, place_model, resolve_placement, to_device
from vmad_pipeline.prompts import IGNORE, encode_conversation, pad_batch
from vmad_pipeline.training.data import ImageTable
from vmad_pipeline.training.objective import weighted_loss
from vmad_pipeline.training.samples import (
    augment,
    batch_sampler,
    conversation,
    paste_anomalies,
    plan_sample,
)

log = logging.getLogger(__name__)
CURVES = ("loss", "ce", "bce", "dice", "pbsd", "patch_bce", "lr")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _checkpointing(llm, action: str):
    """The LLM's activation-checkpointing switch: transformers 5 renames
    ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` (and deprecates the
    old name); older releases have only the old one. Both take the checkpoint function's keyword
    arguments first."""
    return getattr(llm, f"activation_checkpointing_{action}", None) or getattr(
        llm, f"gradient_checkpointing_{action}"
    )


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_batch(
    model: VmadModel,
    tokenizer: PreTrainedTokenizerFast,
    table: ImageTable,
    idx: list[int],
    qa: dict[tuple[str, str], dict],
    cfg: TrainConfig,
    rng: random.Random,
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The model inputs of one batch: per sample a plan (task, name, paste), then augmentation
    and pasted anomalies, then the conversation, written from the final mask so that its text
    (location, yes / no) stays true."""
    rows = [table.rows.iloc[i] for i in idx]
    plans = [plan_sample(r.category, bool(r.label), cfg, rng) for r in rows]
    images, masks = table.images[idx], table.masks[idx]
    if cfg.augment:
        images, masks = augment(images, masks, gen, [p.geometric for p in plans])
    pasted = [k for k, p in enumerate(plans) if p.paste]
    images, masks = paste_anomalies(images, masks, pasted, gen)
    ids, labels = [], []
    for plan, r, mask in zip(plans, rows, masks.numpy(), strict=True):
        prompt, answer = conversation(
            plan,
            r.category,
            str(getattr(r, "defect_type", "") or ""),
            qa.get((r.source, r.image_path)),
            mask,
            seg_first=model.config.seg_first,
            rng=rng,
        )
        a, b = encode_conversation(tokenizer, prompt, answer, model.num_image_tokens)
        ids.append(a)
        labels.append(b)
    input_ids, attention = pad_batch(ids, tokenizer.pad_token_id)
    label_ids, _ = pad_batch(labels, IGNORE)
    images_clip, images_sam = to_model_inputs(images, model.config.vision.image_size)
    classes = list(model.config.dssl.classes)
    class_idx = torch.tensor(
        [classes.index(r.category) if r.category in classes else -1 for r in rows]
    )
    oracle = torch.tensor([rng.random() < cfg.evidence_oracle for _ in rows])
    return {
        "oracle": oracle,
        "images_clip": images_clip,
        "images_sam": images_sam,
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": label_ids,
        "masks": masks,
        "class_idx": class_idx,
    }


def _record(history: dict[str, list[float]], out: VmadOutput, loss: torch.Tensor, lr: float):
    history["loss"].append(loss.item())
    for key in ("ce", "bce", "dice", "pbsd", "patch_bce"):
        value = getattr(out, key)
        history[key].append(value.item() if value is not None else float("nan"))
    history["lr"].append(lr)


def train(
    model: VmadModel,
    tokenizer: PreTrainedTokenizerFast,
    table: ImageTable,
    qa: dict[tuple[str, str], dict],
    cfg: TrainConfig,
) -> dict[str, list[float]]:
    """Train in place; returns per-step curves (``CURVES``)."""
    seed_everything(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    rng = random.Random(cfg.seed)
    device, dtype = resolve_placement(cfg.device, cfg.precision)
    place_model(model, device, dtype)
    if cfg.gradient_checkpointing:
        with quiet_peft():
            _checkpointing(model.llm, "enable")({"use_reentrant": False})
    log.info("training on %s in %s", device, dtype)
    params = trainable_parameters(model)
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    sched = get_cosine_schedule_with_warmup(opt, min(cfg.warmup_steps, cfg.steps // 2), cfg.steps)
    history: dict[str, list[float]] = {k: [] for k in CURVES}
    sampler = batch_sampler(len(table.rows), cfg.batch_size, rng)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    bar = tqdm(range(cfg.steps), desc="train", disable=not cfg.progress)
    start = time.perf_counter()
    for step in bar:
        batch = make_batch(model, tokenizer, table, next(sampler), qa, cfg, rng, gen)
        with autocast(device, dtype):
            out = model(**to_device(batch, device))
            loss = weighted_loss(out, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        _record(history, out, loss, sched.get_last_lr()[0])
        rate = (step + 1) * cfg.batch_size / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", img_s=f"{rate:.1f}")
    if cfg.gradient_checkpointing:
        with quiet_peft():
            _checkpointing(model.llm, "disable")()
    model.eval()
    return history
