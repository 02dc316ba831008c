"""What one training sample is: its conversation (task type), the batch order, augmentation and
pasted anomalies. Every random choice comes from the generators passed in, so a seed fixes them."""

from __future__ import annotations

import math
import random

import torch

from vmad_pipeline import prompts

TASKS = ("seg", "seg_answer", "vqa")


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
