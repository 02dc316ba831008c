"""The training loop as plain functions: AdamW, warm-up then cosine, gradient clipping."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast, get_cosine_schedule_with_warmup

from vmad_pipeline.configs import TrainConfig
from vmad_pipeline.models.vmad import VmadModel
from vmad_pipeline.training import prompts
from vmad_pipeline.training.data import (
    IGNORE,
    ImageTable,
    encode_conversation,
    pad_batch,
    to_model_inputs,
)
from vmad_pipeline.training.device import autocast, place_model, resolve_placement

log = logging.getLogger(__name__)
TASKS = ("seg", "seg_answer", "vqa")
CURVES = ("loss", "ce", "bce", "dice", "pbsd", "patch_bce", "lr")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_conversation(
    task: str, category: str, anomalous: bool, qa: dict | None, normal_text: str, rng: random.Random
) -> tuple[str, str]:
    """(prompt, answer) of one training sample for a task type (method.md section 1)."""
    if task == "seg":
        return prompts.seg_prompt(category), prompts.SEG_ANSWER
    if task == "seg_answer":
        kind = rng.choice(list(prompts.ANSWER_KINDS))
        text = qa[kind] if (anomalous and qa) else normal_text
        return prompts.seg_answer_prompt(category, kind), f"{prompts.SEG_ANSWER} {text}"
    text = qa["description"] if (anomalous and qa) else normal_text
    return prompts.vqa_prompt(category), prompts.vqa_answer(anomalous, text)


def batch_sampler(n: int, batch_size: int, rng: random.Random):
    """Endless shuffled epochs of indices."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield order[i : i + batch_size]


def augment(
    images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometric and colour augmentation of a uint8 batch (B x 3 x S x S, masks B x S x S).

    Flips, 90-degree rotations, a channel permutation and brightness/contrast jitter: a defect
    is defined by its contrast with its surroundings, not by an object's absolute colour, and
    this keeps the tiny model from memorising the training classes' appearance.
    """
    images, masks = images.clone(), masks.clone()
    for i in range(len(images)):
        k = int(torch.randint(4, (1,), generator=gen))
        flip = bool(torch.randint(2, (1,), generator=gen))
        img, msk = torch.rot90(images[i], k, (1, 2)), torch.rot90(masks[i], k, (0, 1))
        if flip:
            img, msk = img.flip(2), msk.flip(1)
        img = img[torch.randperm(3, generator=gen)].float()
        gain = 0.7 + 0.6 * torch.rand((), generator=gen)
        bias = 40.0 * (torch.rand((), generator=gen) - 0.5)
        mean = img.mean()
        images[i] = ((img - mean) * gain + mean + bias).clamp(0, 255).to(torch.uint8)
        masks[i] = msk
    return images, masks


def paste_anomalies(
    images: torch.Tensor, masks: torch.Tensor, which: list[int], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste an elliptical patch of another image of the batch (shifted) into each sample in
    ``which`` and add it to its mask: self-supervised anomaly synthesis in the spirit of
    CutPaste (Li et al., CVPR 2021) and DRAEM (Zavrtanik et al., ICCV 2021). It teaches the
    model "a region that does not belong here" rather than the training classes' defects,
    which is what transfers to unseen classes. Written here because no library offers it for
    tensors with masks.
    """
    if len(images) < 2 or not which:
        return images, masks
    images, masks = images.clone(), masks.clone()
    size = images.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in which:
        j = (i + 1 + int(torch.randint(len(images) - 1, (1,), generator=gen))) % len(images)
        r1, r2 = (size * (0.03 + 0.11 * torch.rand(2, generator=gen))).tolist()
        cx, cy = (size * (0.15 + 0.7 * torch.rand(2, generator=gen))).tolist()
        theta = float(torch.rand((), generator=gen)) * math.pi
        u = (xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)
        v = -(xx - cx) * math.sin(theta) + (yy - cy) * math.cos(theta)
        blob = (u / r1) ** 2 + (v / r2) ** 2 <= 1  # (S, S)
        shift = [int(t) for t in torch.randint(-size // 2, size // 2, (2,), generator=gen)]
        source = torch.roll(images[j], shift, (1, 2))
        images[i][:, blob] = source[:, blob]
        masks[i][blob] = 1
    return images, masks


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def train(
    model: VmadModel,
    tokenizer: PreTrainedTokenizerFast,
    table: ImageTable,
    qa: dict[tuple[str, str], dict],
    normal_text: Callable[[str], str],
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
        model.llm.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    log.info("training on %s in %s", device, dtype)
    params = trainable_parameters(model)
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    sched = get_cosine_schedule_with_warmup(opt, min(cfg.warmup_steps, cfg.steps // 2), cfg.steps)
    weights = [cfg.task_mix.seg, cfg.task_mix.seg_answer, cfg.task_mix.vqa]
    clip_size = model.config.vision.image_size
    history: dict[str, list[float]] = {k: [] for k in CURVES}
    classes = list(model.config.dssl.classes)
    sampler = batch_sampler(len(table.rows), cfg.batch_size, rng)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    bar = tqdm(range(cfg.steps), desc="train", disable=not cfg.progress)
    for _step in bar:
        idx = next(sampler)
        ids, labels, pasted = [], [], []
        for k, i in enumerate(idx):
            r = table.rows.iloc[i]
            task = rng.choices(TASKS, weights)[0]
            if task == "seg" and rng.random() < cfg.paste_prob:
                pasted.append(k)  # only mask-only answers: the text stays true
            prompt, answer = make_conversation(
                task,
                r.category,
                bool(r.label),
                qa.get((r.source, r.image_path)),
                normal_text(r.category),
                rng,
            )
            a, b = encode_conversation(tokenizer, prompt, answer, model.num_image_tokens)
            ids.append(a)
            labels.append(b)
        input_ids, attention = pad_batch(ids, tokenizer.pad_token_id)
        label_ids, _ = pad_batch(labels, IGNORE)
        images, masks = table.images[idx], table.masks[idx]
        if cfg.augment:
            images, masks = augment(images, masks, gen)
        images, masks = paste_anomalies(images, masks, pasted, gen)
        images_clip, images_sam = to_model_inputs(images, clip_size)
        class_idx = torch.tensor(
            [classes.index(c) if c in classes else -1 for c in table.rows.category.iloc[idx]]
        )
        with autocast(device, dtype):
            out = model(
                images_clip=images_clip.to(device),
                images_sam=images_sam.to(device),
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                labels=label_ids.to(device),
                masks=masks.to(device),
                class_idx=class_idx.to(device),
                weights=cfg.loss,
            )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        for key, value in (
            ("loss", out.loss),
            ("ce", out.ce),
            ("bce", out.bce),
            ("dice", out.dice),
            ("pbsd", out.pbsd),
            ("patch_bce", out.patch_bce),
        ):
            history[key].append(value.item() if value is not None else float("nan"))
        history["lr"].append(sched.get_last_lr()[0])
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
    if cfg.gradient_checkpointing:
        model.llm.gradient_checkpointing_disable()
    model.eval()
    return history
