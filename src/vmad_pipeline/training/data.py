"""The streaming training data: a torch ``Dataset`` over manifest rows that decodes, resizes and
augments one sample at a time, the batch sampler that shards each optimiser step's global batch
over processes and accumulation steps, and the texts the tokenizer is trained on.

Host memory holds the rows, never the images: a sample is read from its file when a batch
needs it (``images.load_rgb`` / ``images.load_mask``, the module evaluation and inference read
with), so it does not grow with the number of images.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from vmad_pipeline import prompts
from vmad_pipeline.datasets.manifest import image_file, mask_file
from vmad_pipeline.images import load_mask, load_rgb, to_model_inputs
from vmad_pipeline.training.samples import (
    Plan,
    augment,
    conversation_turns,
    paint_anomaly,
    paste_anomaly,
    paste_source,
    plan_sample,
    sample_random,
    shared_structure,
    synthesis_kind,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSpec:
    """What a sample needs to know of the model: sizes, the token layout and the DSSL boxes."""

    size: int  # the SAM input side (images and masks are stored at it)
    slots: prompts.ImageSlots  # what the image placeholder expands to
    seg_first: bool
    classes: tuple[str, ...]  # DSSL's training classes (their index goes with the sample)
    boxes: int = 0  # DSSL boxes per sample; 0 without DSSL
    box_min: float = 0.0
    box_max: float = 0.0
    region_oracle: float = 0.0  # the share of samples whose region tokens read the true region
    references: bool = False  # the model reads normal references (train.reference_shots)


class TrainingSamples(Dataset):
    """Manifest rows as training samples, one at a time. A key is (epoch, index): every random
    choice of the sample comes from ``samples.sample_random(seed, epoch, index)``.

    ``fixed``: the validation form of a sample: the segmentation question about the true name,
    no augmentation, no paste (the same every time). ``painter``: the defect generator
    (``synthesis.render.Painter``) that ``cfg.synthesis`` = generated / both paints with.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        roots: dict[str, str],
        qa: dict[tuple[str, str], dict],
        cfg,
        spec: SampleSpec,
        tokenizer,
        *,
        fixed: bool = False,
        painter=None,
    ) -> None:
        cols = ["source", "category", "image_path", "mask_path", "label"]
        self.rows = [tuple(r) for r in rows[cols].itertuples(index=False)]
        self.defects = [str(d or "") for d in rows.get("defect_type", [""] * len(rows))]
        self.roots = dict(roots)
        self.qa = {(r[0], r[2]): qa[(r[0], r[2])] for r in self.rows if (r[0], r[2]) in qa}
        self.cfg, self.spec, self.tokenizer, self.fixed = cfg, spec, tokenizer, fixed
        self.painter = painter
        # the normal rows of each (source, class): a sample's references come from its own
        self.normals: dict[tuple[str, str], list[int]] = {}
        for i, (source, category, _, _, label) in enumerate(self.rows):
            if not label:
                self.normals.setdefault((source, category), []).append(i)
        if cfg.synthesis != "paste" and painter is None and not fixed:
            raise ValueError(
                f"train.synthesis={cfg.synthesis} needs the defect generator (the train pipeline's "
                "train_generator node); none was given"
            )

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (3 x S x S uint8) and mask (S x S uint8 0/1) of row ``index``; a file that cannot
        be read is a ValueError naming it."""
        source, _, image_path, mask_path, _ = self.rows[index]
        size = self.spec.size
        image = torch.from_numpy(load_rgb(image_file(self.roots, source, image_path), size))
        mask_path = mask_file(self.roots, source, mask_path)
        return image.permute(2, 0, 1).contiguous(), torch.from_numpy(load_mask(mask_path, size))

    def __getitem__(self, key: tuple[int, int]) -> dict | None:
        epoch, index = key
        try:
            return self._sample(epoch, index)
        except ValueError as err:
            if self.cfg.data.on_error == "skip":
                log.warning("skipped a training sample: %s", err)
                return None
            raise

    def _sample(self, epoch: int, index: int) -> dict:
        source, category, image_path, _, label = self.rows[index]
        rng, gen = sample_random(self.cfg.seed, epoch, index)
        plan = (
            Plan(task="seg", name=prompts.object_name(category), paste=False, geometric=False)
            if self.fixed
            else plan_sample(category, bool(label), self.cfg, rng)
        )
        image, mask = self.read(index)
        augmented = self.cfg.augment and not self.fixed
        look = gen.get_state()  # the augmentation's draws, which the references repeat
        if augmented:
            image, mask = augment(image, mask, gen, plan.geometric)
        if plan.paste:
            image, mask = self._synthetic_anomaly(index, image, mask, gen)
        turns = conversation_turns(
            plan,
            category,
            self.defects[index],
            self.qa.get((source, image_path)),
            mask.numpy(),
            seg_first=self.spec.seg_first,
            rng=rng,
        )
        ids, labels = prompts.encode_turns(self.tokenizer, turns, self.spec.slots)
        spec = self.spec
        classes = spec.classes
        sample = {
            "image": image,
            "mask": mask,
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "class_idx": classes.index(category) if category in classes else -1,
            "oracle": rng.random() < self.cfg.evidence_oracle,
            "region_oracle": rng.random() < spec.region_oracle,
            # AMoE-LoRA's router statistics group samples by task and final image state
            "group": f"{plan.task}.{'anomalous' if bool(mask.any()) else 'normal'}",
        }
        if spec.references and not self.fixed:
            refs = self._references(index, rng, look if augmented else None, plan.geometric)
            if refs is not None and len(self) > 1 and rng.random() < self.cfg.shared_paste_prob:
                other = self.read(paste_source(index, len(self), gen))[0]
                sample["image"], refs = shared_structure(image, mask, refs, other, gen)
            if refs is not None:
                sample["references"] = refs
        if spec.boxes:
            from vmad_pipeline.models.dssl import sample_boxes

            sample["boxes"] = sample_boxes(
                1, spec.boxes, spec.size, spec.box_min, spec.box_max, gen
            )[0]
        return sample

    def _references(
        self, index: int, rng, look: torch.Tensor | None, geometric: bool
    ) -> torch.Tensor | None:
        """k (drawn from ``cfg.reference_shots``) other normal images of the sample's source and
        class, k x 3 x S x S uint8, augmented with the sample's own draws (``look``: its
        generator's state before them; None: not augmented): a user's references are taken as
        the inspected images are. None for k = 0 or when the class has no other normal image."""
        source, category = self.rows[index][:2]
        k = rng.choice(self.cfg.reference_shots)
        pool = [j for j in self.normals.get((source, category), []) if j != index]
        if not k or not pool:
            return None
        out = []
        for j in rng.sample(pool, min(k, len(pool))):
            image, blank = self.read(j)
            if look is not None:
                image, _ = augment(image, blank, torch.Generator().set_state(look), geometric)
            out.append(image)
        return torch.stack(out)

    def _synthetic_anomaly(
        self, index: int, image: torch.Tensor, mask: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pasted anomaly, or a generated one (``cfg.synthesis``; ``both``: drawn per sample
        from ``gen``), added to ``image`` and ``mask``."""
        if synthesis_kind(self.cfg.synthesis, gen) == "generated":
            return paint_anomaly(image, mask, self.painter, gen)
        if len(self) > 1:
            other, blank = self.read(paste_source(index, len(self), gen))
            if self.cfg.augment and not self.fixed:  # its own colours, as a batch-mate's were
                other, _ = augment(other, blank, gen)
            image, mask = paste_anomaly(image, mask, other, gen)
        return image, mask


def collate(samples: list[dict | None], pad_id: int) -> dict:
    """A micro-batch of samples (``None``: skipped, counted in ``skipped``); images stay uint8
    (a quarter of the bytes to move), the trainer makes model inputs on its device."""
    kept = [s for s in samples if s is not None]
    batch: dict = {"skipped": len(samples) - len(kept), "size": len(kept)}
    if not kept:
        return batch
    batch["input_ids"], batch["attention_mask"] = prompts.pad_batch(
        [s["input_ids"].tolist() for s in kept], pad_id
    )
    batch["labels"], _ = prompts.pad_batch([s["labels"].tolist() for s in kept], prompts.IGNORE)
    batch["images"] = torch.stack([s["image"] for s in kept])
    batch["masks"] = torch.stack([s["mask"] for s in kept])
    batch["class_idx"] = torch.tensor([s["class_idx"] for s in kept])
    batch["oracle"] = torch.tensor([s["oracle"] for s in kept])
    batch["region_oracle"] = torch.tensor([s["region_oracle"] for s in kept])
    batch["route_groups"] = [s["group"] for s in kept]
    if "boxes" in kept[0]:
        batch["boxes"] = torch.stack([s["boxes"] for s in kept])
    refs = [(i, s["references"]) for i, s in enumerate(kept) if "references" in s]
    if refs:  # one tensor of every sample's references, and the row each belongs to
        batch["reference_images"] = torch.cat([r for _, r in refs])
        batch["reference_owner"] = torch.cat(
            [torch.full((len(r),), i, dtype=torch.long) for i, r in refs]
        )
    return batch


def model_inputs(batch: dict, model, device: torch.device) -> dict[str, torch.Tensor]:
    """A collated micro-batch as the model's keyword arguments, on ``device``."""
    images = batch["images"].to(device, non_blocking=True)
    clip, sam = to_model_inputs(images, model.config.vision.image_size)
    keys = (
        "input_ids",
        "attention_mask",
        "labels",
        "masks",
        "class_idx",
        "oracle",
        "boxes",
        "region_oracle",
    )
    moved = {k: batch[k].to(device, non_blocking=True) for k in keys if k in batch}
    groups = {"route_groups": batch["route_groups"]} if "route_groups" in batch else {}
    if "reference_images" in batch:
        refs = batch["reference_images"].to(device, non_blocking=True)
        groups["reference_images"] = to_model_inputs(refs, model.config.vision.image_size)[0]
        groups["reference_owner"] = batch["reference_owner"].to(device)
    return {"images_clip": clip, "images_sam": sam, **moved, **groups}


class StepBatches(Sampler):
    """The keys of this process's micro-batches, step after step, from ``start`` to ``steps``.

    Step s reads the global batch s of shuffled epochs (epoch e's order is a function of (seed,
    e); the tail short of a batch is dropped); it is cut into ``accum`` micro-batches, each
    cut into ``world`` contiguous slices, one per rank. The union over ranks and micro-batches
    is the global batch whatever ``world`` and ``accum`` are, and rank order is batch order.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        steps: int,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
        accum: int = 1,
    ) -> None:
        if n < batch_size:
            raise ValueError(
                f"{n} training images are fewer than one batch ({batch_size}); lower "
                "train.batch_size"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps, self.start, self.rank, self.world, self.accum = steps, start, rank, world, accum
        self.per_epoch = n // batch_size
        self.micro = batch_size // (accum * world)

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum

    def order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(hash_ints(self.seed, epoch))
        return torch.randperm(self.n, generator=gen).tolist()

    def global_batch(self, step: int) -> list[tuple[int, int]]:
        epoch, k = divmod(step, self.per_epoch)
        order = self.order(epoch)[k * self.batch_size : (k + 1) * self.batch_size]
        return [(epoch, i) for i in order]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.steps):
            batch = self.global_batch(step)
            for m in range(self.accum):
                lo = (m * self.world + self.rank) * self.micro
                yield batch[lo : lo + self.micro]


def hash_ints(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (numpy's SeedSequence mixes them)."""
    import numpy as np

    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0]) >> 1


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
    # the multi-turn chat's follow-ups and their short answers
    texts += [prompts.next_turn(q) for qs in prompts.FOLLOW_UPS.values() for q in qs]
    texts += [prompts.FOLLOW_UP_LOCATION.format(location=loc) for loc in locations]
    texts += [prompts.FOLLOW_UP_TYPE.format(a_defect=prompts.a_defect(d)) for d in defect_types]
    texts.append(prompts.FOLLOW_UP_NONE)
    return texts
