"""Stage 1 of Anomaly-OV's recipe: the anomaly expert trained alone ("professional training") on
the training classes' masks and labels, before instruction tuning freezes it (stage 2,
``training.fit``). The samples are the instruction tuning's own (``TrainingSamples``: the same
augmentation and pasted anomalies, so every class has anomalous examples); only their images and
masks are read, and an image is anomalous when its mask is not empty.

The result is kept in ``checkpoint.expert_dir`` under a hash of everything it depends on (the
preset and the expert's settings, the data, the seed and the sampling settings), so a training
whose stage 1 did not change reuses it instead of training it again.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vmad_pipeline.atomic import atomic_file
from vmad_pipeline.configs import ModelConfig, TrainConfig, to_dict
from vmad_pipeline.images import to_model_inputs
from vmad_pipeline.losses.expert import expert_loss
from vmad_pipeline.models.extras import expert_levels
from vmad_pipeline.placement import autocast, place_model, resolve_placement
from vmad_pipeline.training.data import StepBatches, TrainingSamples, collate
from vmad_pipeline.training.state import stable_hash

log = logging.getLogger(__name__)


def stage_key(cfg: TrainConfig, model_cfg: ModelConfig, data_hash: str) -> str:
    """What stage 1 computes from: the expert's and the vision tower's settings, the data and the
    sampling settings (``task_mix``, augmentation, pasting) with the seed."""
    sampling = ("seed", "task_mix", "augment", "paste_prob", "detect_paste_prob", "name_swap_prob")
    train = to_dict(cfg)
    model = to_dict(model_cfg)
    return stable_hash(
        {
            "version": 1,
            "data": data_hash,
            "train": {k: train[k] for k in sampling},
            "model": {k: model[k] for k in ("preset", "vision", "expert", "sam")},
        }
    )[:16]


def train_expert(
    model, samples: TrainingSamples, cfg: TrainConfig, pad_id: int, device: torch.device
) -> list[float]:
    """Train ``model.expert`` alone for ``expert.steps`` steps (AdamW, constant rate) on batches
    of ``samples``, in the training precision recipe (``placement``: the frozen tower stored in
    the training dtype, the expert in fp32, the maths under autocast); only the tower and the
    expert are moved to ``device``. Returns the loss per step."""
    e = model.config.expert
    _, dtype = resolve_placement(cfg.device, cfg.precision)
    model.vision.requires_grad_(False)
    model.expert.requires_grad_(True)
    place_model(model.vision, device, dtype)
    expert = place_model(model.expert, device, dtype).train()
    params = list(expert.parameters())
    optimiser = torch.optim.AdamW(params, lr=e.lr, weight_decay=0.0)
    sampler = StepBatches(len(samples), e.batch_size, seed=cfg.seed, steps=e.steps)
    loader = DataLoader(
        samples, batch_sampler=sampler, collate_fn=functools.partial(collate, pad_id=pad_id)
    )
    losses = []
    bar = tqdm(loader, total=e.steps, desc="expert (stage 1)", disable=not cfg.progress)
    for batch in bar:
        if not batch["size"]:
            continue
        clip, _ = to_model_inputs(batch["images"].to(device), model.config.vision.image_size)
        masks = batch["masks"].to(device).float()
        with autocast(device, dtype):
            with torch.no_grad():
                _, frozen = model.vision.encode(clip)
            out = expert(expert_levels(frozen, e.levels))
        labels = masks.flatten(1).amax(1)
        loss = expert_loss(  # in fp32: BCE on probabilities
            out.level_maps.float(), out.score.float(), masks, labels, image_weight=e.image_weight
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


def expert_stage(
    model,
    samples: TrainingSamples,
    cfg: TrainConfig,
    pad_id: int,
    key: str,
    *,
    device: torch.device | None = None,
    cached_only: bool = False,
) -> dict:
    """Stage 1's result for ``key`` ({"key", "state", "losses", "seconds", "reused"}): read from
    ``checkpoint.expert_dir`` when it was computed before, else trained here and written there
    atomically. ``model.expert`` holds the result either way. ``cached_only``: refuse to train it
    (the ranks of a run over several machines must all read the one stage 1)."""
    path = Path(cfg.checkpoint.expert_dir) / f"{key}.pt"
    hint = (
        "run `kedro run --pipeline train --to-nodes train_expert` first, where every node can "
        "read its output"
    )

    def compute() -> dict:
        losses = train_expert(model, samples, cfg, pad_id, device or torch.device("cpu"))
        state = {k: v.detach().cpu().clone() for k, v in model.expert.state_dict().items()}
        return {"key": key, "state": state, "losses": losses}

    result = cached_stage(
        path, compute, cached_only=cached_only, what="the anomaly expert's stage 1", hint=hint
    )
    if result["reused"]:
        model.expert.load_state_dict(result["state"])
    return result


def cached_stage(
    path: Path, compute: Callable[[], dict], *, cached_only: bool, what: str, hint: str
) -> dict:
    """A stage's result kept on disk under a key of its inputs: ``path`` read when it exists
    (``reused`` True), else ``compute()`` run, timed (``seconds``) and written there atomically
    (``reused`` False). ``cached_only``: refuse to compute (FileNotFoundError saying ``hint``)."""
    if cached_only and not path.exists():
        raise FileNotFoundError(f"{what} is not at {path}: {hint}")
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        log.info("%s: reused %s", what, path)
        return {**saved, "reused": True}
    start = time.perf_counter()
    result = compute()
    result["seconds"] = round(time.perf_counter() - start, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".pt") as tmp:
        torch.save(result, tmp)
    log.info("%s: computed in %.1f s -> %s", what, result["seconds"], path)
    return {**result, "reused": False}


def freeze_expert(model, state: dict[str, torch.Tensor]) -> None:
    """Stage 2: the expert holds stage 1's weights and trains no further."""
    model.expert.load_state_dict(state)
    model.expert.requires_grad_(False)


__all__ = ["cached_stage", "expert_stage", "freeze_expert", "stage_key", "train_expert"]
