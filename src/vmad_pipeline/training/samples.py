"""What one training sample is: its conversation (task type), the batch order, augmentation and
pasted anomalies. Every random choice comes from the generators passed in, so a seed fixes them."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from vmad_pipeline import prompts
from vmad_pipeline.annotation.answers import follow_up_answer, stored_answer
from vmad_pipeline.annotation.geometry import mask_geometry

TASKS = ("seg", "seg_answer", "vqa", "chat")


@dataclass(frozen=True)
class Plan:
    """What one training row becomes at one step, decided before its pixels are touched."""

    task: str  # one of TASKS
    name: str  # the object's name in the question and answer: its class's, or a made-up one
    paste: bool  # a pasted anomaly joins its mask
    geometric: bool  # flips / rotations allowed (not for stored RIAD answers: fixed locations)


def plan_sample(category: str, anomalous: bool, cfg, rng: random.Random) -> Plan:
    """The task (``cfg.task_mix``), the name (made up with ``cfg.name_swap_prob``) and whether a
    pasted anomaly joins: on mask-only samples (``paste_prob``: the text stays true), and on
    normal images asked the detection question (``detect_paste_prob``: the answer describes the
    paste)."""
    mix = cfg.task_mix
    task = rng.choices(TASKS, mix.weights())[0]  # chat last: a zero weight draws as before
    swap = rng.random() < cfg.name_swap_prob
    name = prompts.random_name(rng) if swap else prompts.object_name(category)
    detect = 0.0 if anomalous else cfg.detect_paste_prob
    chance = {"seg": cfg.paste_prob, "vqa": detect, "chat": detect}
    paste = rng.random() < chance.get(task, 0.0)
    # stored RIAD answers name fixed locations: no flips or rotations under them
    return Plan(task=task, name=name, paste=paste, geometric=task in ("seg", "vqa"))


def conversation(
    plan: Plan,
    category: str,
    defect_type: str,
    qa: dict | None,
    mask: np.ndarray,
    *,
    seg_first: bool,
    rng: random.Random,
) -> tuple[str, str]:
    """(prompt, answer) of one sample (method.md section 1), its text true to ``mask`` (the
    sample's final mask: augmented, with any paste): the detection answer names the location of
    the mask and the defect type of a real defect ("an anomaly" for a paste alone). The question
    names the object (``plan.name``); answers call it "the part"."""
    name = plan.name
    if plan.task == "seg":
        return prompts.seg_prompt(name), prompts.SEG_ANSWER
    anomalous = bool(mask.any())
    if plan.task == "seg_answer":
        kind = rng.choice(list(prompts.ANSWER_KINDS))
        text = stored_answer(kind, anomalous, qa, category)
        return prompts.seg_answer_prompt(name, kind), f"{prompts.SEG_ANSWER} {text}"
    answer = prompts.detection_answer(
        anomalous=anomalous,
        defect=_named_defect(plan, defect_type),
        location=mask_geometry(mask)["location"] if anomalous else None,
        seg_first=seg_first,
    )
    return prompts.vqa_prompt(name), answer


def conversation_turns(
    plan: Plan,
    category: str,
    defect_type: str,
    qa: dict | None,
    mask: np.ndarray,
    *,
    seg_first: bool,
    rng: random.Random,
) -> list[tuple[str, str]]:
    """The (question, answer) turns of one sample: :func:`conversation`'s one turn, or for the
    chat task the detection turn and one follow-up (a kind and a wording of
    ``prompts.FOLLOW_UPS``) answered from the same mask and RIAD answers."""
    chat = plan.task == "chat"  # its first turn is the detection question's
    first_plan = dataclasses.replace(plan, task="vqa") if chat else plan
    first = conversation(first_plan, category, defect_type, qa, mask, seg_first=seg_first, rng=rng)
    if not chat:
        return [first]
    has_text = not mask.any() or bool(qa)  # a paste on a normal image has no RIAD answers
    kind = rng.choice(list(prompts.FOLLOW_UPS) if has_text else ["location", "type"])
    question = rng.choice(prompts.FOLLOW_UPS[kind])
    defect = _named_defect(plan, defect_type)
    return [first, (question, follow_up_answer(kind, mask, defect, qa, category))]


def _named_defect(plan: Plan, defect_type: str) -> str | None:
    """The defect type a sample's text may name: none for a paste (its type is unknown)."""
    return None if plan.paste else (defect_type or None)


def sample_random(seed: int, epoch: int, index: int) -> tuple[random.Random, torch.Generator]:
    """The random streams of one sample at one epoch: every choice about it (task, name, paste,
    augmentation, DSSL boxes) is a function of (seed, epoch, index) alone, so a sample is the
    same whichever batch, worker or process draws it."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)
    return random.Random(int(state[0])), torch.Generator().manual_seed(int(state[1]) >> 1)


def augment(
    image: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, geometric: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometric and colour augmentation of one uint8 image (3 x S x S, mask S x S).

    Flips, 90-degree rotations (where ``geometric`` allows them), a channel permutation and
    brightness/contrast jitter: a defect is defined by its contrast with its surroundings, not
    by an object's absolute colour, and this keeps the model from memorising the training
    classes' appearance. The random draws are the same whatever ``geometric`` says.
    """
    k = int(torch.randint(4, (1,), generator=gen))
    flip = bool(torch.randint(2, (1,), generator=gen))
    if not geometric:
        k, flip = 0, False
    img, msk = torch.rot90(image, k, (1, 2)), torch.rot90(mask, k, (0, 1))
    if flip:
        img, msk = img.flip(2), msk.flip(1)
    img = img[torch.randperm(3, generator=gen)].float()
    gain = 0.7 + 0.6 * torch.rand((), generator=gen)
    bias = 40.0 * (torch.rand((), generator=gen) - 0.5)
    mean = img.mean()
    out = ((img - mean) * gain + mean + bias).clamp(0, 255).to(torch.uint8)
    return out, msk.contiguous()


def blob_mask(size: int, gen: torch.Generator) -> torch.Tensor:
    """A random rotated ellipse (S x S bool): radii 3-14% of the side, centre in the middle 70%
    of the image. The region of both synthetic anomalies (:func:`paste_anomaly`,
    :func:`paint_anomaly`)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r1, r2 = (size * (0.03 + 0.11 * torch.rand(2, generator=gen))).tolist()
    cx, cy = (size * (0.15 + 0.7 * torch.rand(2, generator=gen))).tolist()
    theta = float(torch.rand((), generator=gen)) * math.pi
    u = (xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)
    v = -(xx - cx) * math.sin(theta) + (yy - cy) * math.cos(theta)
    return (u / r1) ** 2 + (v / r2) ** 2 <= 1


def synthesis_kind(mode: str, gen: torch.Generator) -> str:
    """Which synthetic anomaly a sample gets under ``train.synthesis`` = ``mode``: ``paste`` or
    ``generated`` as named (no draw), or for ``both`` one of the two, 50/50 from ``gen``."""
    if mode == "both":
        return "generated" if bool(torch.randint(2, (1,), generator=gen)) else "paste"
    return mode


def paint_anomaly(
    image: torch.Tensor, mask: torch.Tensor, painter, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A generated defect of a random training defect type (``painter.types``) painted inside a
    random blob (:func:`blob_mask`) of ``image`` (3 x S x S uint8) and added to ``mask``; every
    draw (blob, type, the generator's noise) from ``gen``. ``painter``: a
    ``synthesis.render.Painter``."""
    blob = blob_mask(image.shape[-1], gen)
    type_idx = int(torch.randint(len(painter.types), (1,), generator=gen))
    image = painter(image, blob, type_idx, gen)
    mask = mask.clone()
    mask[blob] = 1
    return image, mask


def paste_anomaly(
    image: torch.Tensor, mask: torch.Tensor, source: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste an elliptical patch of ``source`` (another training image, shifted) into ``image``
    (3 x S x S uint8) and add it to ``mask`` (S x S): self-supervised anomaly synthesis in the
    spirit of CutPaste (Li et al., CVPR 2021) and DRAEM (Zavrtanik et al., ICCV 2021). It
    teaches the model "a region that does not belong here" rather than the training classes'
    defects, which is what transfers to unseen classes. Written here because no library offers
    it for tensors with masks.
    """
    image, mask = image.clone(), mask.clone()
    size = image.shape[-1]
    blob = blob_mask(size, gen)  # (S, S)
    shift = [int(t) for t in torch.randint(-size // 2, size // 2, (2,), generator=gen)]
    shifted = torch.roll(source, shift, (1, 2))
    image[:, blob] = shifted[:, blob]
    mask[blob] = 1
    return image, mask


def shared_structure(
    image: torch.Tensor,
    mask: torch.Tensor,
    references: torch.Tensor,
    source: torch.Tensor,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same elliptical patch of ``source`` (shifted) pasted at the same place into ``image``
    (3 x S x S uint8, outside its ``mask``) and every reference (k x 3 x S x S): a structure
    that every normal image of the product has, so not a defect; the mask is unchanged. It
    teaches what no training class shows on its own: something that looks like a defect (a
    hole, a ring, a component) is normal when the references have it too. Ours."""
    size = image.shape[-1]
    blob = blob_mask(size, gen)
    shift = [int(t) for t in torch.randint(-size // 2, size // 2, (2,), generator=gen)]
    shifted = torch.roll(source, shift, (1, 2))
    image, references = image.clone(), references.clone()
    region = blob & (mask == 0)
    image[:, region] = shifted[:, region]
    references[:, :, blob] = shifted[:, None, blob].transpose(0, 1)
    return image, references


def paste_source(index: int, n: int, gen: torch.Generator) -> int:
    """Another training image than ``index`` (of ``n``), drawn from the sample's own stream."""
    return (index + 1 + int(torch.randint(n - 1, (1,), generator=gen))) % n
