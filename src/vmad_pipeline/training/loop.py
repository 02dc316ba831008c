"""The training loop: AdamW, warm-up then cosine, gradient clipping, on the distributed engine
(``training.engine``), fed by the streaming loader (``training.data``), with checkpoints and
exact resume (``training.state``) and validation (``training.validation``).

Every process runs :func:`train`; rank 0 alone writes checkpoints and shows progress.
"""

from __future__ import annotations

import functools
import logging
import random
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast, get_cosine_schedule_with_warmup

from vmad_pipeline.configs import TrainConfig
from vmad_pipeline.models.amoe_lora import reset_router_stats
from vmad_pipeline.models.llm import activation_checkpointing, is_amoe
from vmad_pipeline.models.vmad import VmadModel
from vmad_pipeline.placement import place_model, resolve_dtype
from vmad_pipeline.training import engine as eng
from vmad_pipeline.training.data import StepBatches, TrainingSamples, collate, model_inputs
from vmad_pipeline.training.objective import TERMS, answer_tokens, combine, local_counts, shares
from vmad_pipeline.training.routers import model_router_summary
from vmad_pipeline.training.state import Checkpoints, Stop, rng_state, set_rng_state
from vmad_pipeline.training.validation import validate

log = logging.getLogger(__name__)
CURVES = ("loss", *TERMS, "lr")


class TrainingInterrupted(RuntimeError):
    """SIGTERM stopped training; a checkpoint of the step it stopped at was written."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class Progress:
    """What a run has done so far; saved in every checkpoint."""

    step: int = 0
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in CURVES})
    validation: list[dict] = field(default_factory=list)  # one entry per validation pass
    best: dict | None = None  # {"step", "score", "state"} of the best validation score
    skipped: int = 0  # unreadable samples skipped (data.on_error: skip)
    resumed_from: int = 0  # the step this run started at
    # the final trainable weights and buffers, full (rank 0), of a run of several processes:
    # what the launching process loads into its own copy of the model
    state: dict | None = None
    # AMoE-LoRA's router statistics over this run's steps (training.routers; None: plain LoRA)
    router: dict | None = None


@dataclass
class _Run:
    """What the steps of one run share: the engine and the model it wraps, the scheduler, the
    data, the settings, the progress so far, and where validation and checkpoints go."""

    engine: eng.Engine
    model: VmadModel
    sched: torch.optim.lr_scheduler.LRScheduler
    samples: TrainingSamples
    cfg: TrainConfig
    progress: Progress
    validation: TrainingSamples | None
    checkpoints: Checkpoints | None
    stop: Stop


@dataclass
class _StepResult:
    """One optimiser step, summed over ranks: the loss, each term of ``TERMS`` (NaN where no
    sample of the step had it) and the unreadable samples skipped."""

    loss: float
    terms: dict[str, float]
    skipped: int


def _loader(samples: TrainingSamples, sampler: StepBatches, cfg: TrainConfig, pad_id: int, cuda):
    return DataLoader(
        samples,
        batch_sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=functools.partial(collate, pad_id=pad_id),
        pin_memory=cuda,
        worker_init_fn=_worker_init,
    )


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers: the training process keeps the cores


def train(
    model: VmadModel,
    tokenizer: PreTrainedTokenizerFast,
    samples: TrainingSamples,
    cfg: TrainConfig,
    *,
    validation: TrainingSamples | None = None,
    checkpoints: Checkpoints | None = None,
) -> Progress:
    """Train ``model`` in place (every process of the run calls this); returns the progress
    (curves, validation passes, skipped samples). With ``keep: best`` the model ends with the
    best validation state."""
    seed_everything(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dtype = resolve_dtype(cfg.precision, torch.device("cuda" if _cuda(cfg) else "cpu"))
    ds = {
        "micro_batch": cfg.micro_batch,
        "accum": cfg.grad_accum_steps,
        "grad_clip": cfg.grad_clip,
        "bf16": dtype == torch.bfloat16,
    }
    acc = eng.make_accelerator(cfg.engine, cfg.device, ds)
    _check_world(cfg, acc.num_processes)
    torch.manual_seed(cfg.seed + acc.process_index)  # dropout differs between ranks
    place_model(model, acc.device, dtype)
    if cfg.gradient_checkpointing:
        activation_checkpointing(model.llm, True)
    optimizer = functools.partial(_adamw, cfg=cfg)
    engine = eng.wrap(acc, model, optimizer, cfg.engine.strategy, dtype, cfg.grad_accum_steps)
    sched = get_cosine_schedule_with_warmup(
        engine.optimizer, min(cfg.warmup_steps, cfg.steps // 2), cfg.steps
    )
    progress, rng = _resume(engine, sched, checkpoints)
    progress.resumed_from = progress.step
    if engine.is_main:
        log.info("training on %s x %d (%s) in %s", acc.device, engine.world, engine.strategy, dtype)
    stop = Stop()
    stop.install()
    reset_router_stats(model.llm)
    try:
        run = _Run(engine, model, sched, samples, cfg, progress, validation, checkpoints, stop)
        _run(run, rng)
    finally:
        stop.restore()
        if stop.requested:  # checkpoint written: now what SIGTERM means to the rest
            signal.raise_signal(signal.SIGTERM)
    if is_amoe(model.llm):
        progress.router = model_router_summary(model, engine.gather_objects)
    if cfg.keep == "best" and progress.best is not None:
        eng.load_model_state(engine, engine.broadcast_object(progress.best["state"]))
        if engine.is_main:
            log.info("kept the best validation state: step %d", progress.best["step"])
    if engine.world > 1:
        progress.state = eng.model_state(engine)
    if cfg.gradient_checkpointing:
        activation_checkpointing(model.llm, False)
    model.eval()
    return progress


def _cuda(cfg: TrainConfig) -> bool:
    return cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())


def _check_world(cfg: TrainConfig, world: int) -> None:
    if cfg.batch_size % (cfg.grad_accum_steps * world):
        raise ValueError(
            f"train.batch_size {cfg.batch_size} is not divisible by grad_accum_steps x processes "
            f"({cfg.grad_accum_steps} x {world})"
        )


def _adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        trainable_parameters(model),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay,
    )


def _resume(
    engine: eng.Engine, sched, checkpoints: Checkpoints | None
) -> tuple[Progress, dict | None]:
    """The progress of the newest intact checkpoint of this training (its weights, optimiser and
    scheduler states loaded) and this rank's RNG states to restore once the data iterator exists
    (:func:`_run`); or a fresh progress and None (saying why when other checkpoints exist)."""
    if checkpoints is None:
        return Progress(), None
    found = checkpoints.latest() if engine.is_main else None
    found = engine.broadcast_object(found)
    if found is None:
        if engine.is_main:
            checkpoints.explain_fresh()
        return Progress(), None
    step, state = found
    eng.load_model_state(engine, state["model"])
    eng.load_optimizer_state(engine, state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    rngs, rng = state["rng"], None
    if len(rngs) == engine.world:
        rng = rngs[engine.rank]
    else:
        log.warning(
            "checkpoint of %d processes resumed by %d: RNG reseeded", len(rngs), engine.world
        )
    if engine.is_main:
        log.info("resumed from the checkpoint of step %d (%s)", step, checkpoints.dir)
    return state["progress"], rng


def _save(engine: eng.Engine, sched, progress: Progress, checkpoints: Checkpoints | None) -> None:
    """A checkpoint of the current step (collective: every rank gives its state; rank 0 writes)."""
    if checkpoints is None:
        return
    state = {
        "model": eng.model_state(engine),
        "optimizer": eng.optimizer_state(engine),
        "scheduler": sched.state_dict(),
        "rng": engine.gather_objects(rng_state()),
        "progress": progress,
    }
    if engine.is_main:
        checkpoints.write(progress.step, state)
    engine.barrier()


def _run(run: _Run, rng: dict | None = None) -> None:
    """The steps from ``progress.step`` to ``cfg.steps``; ``rng``: the RNG states of a resumed
    run, restored after the data iterator is made (making it draws its base seed from the global
    RNG: restored before, that draw would shift every dropout mask after the resumed step).
    Why one function of this length: the step's parts (micro-batches, logging, validation,
    checkpoints) share the same locals."""
    engine, model, cfg, progress = run.engine, run.model, run.cfg, run.progress
    sampler = StepBatches(
        len(run.samples),
        cfg.batch_size,
        seed=cfg.seed,
        steps=cfg.steps,
        start=progress.step,
        rank=engine.rank,
        world=engine.world,
        accum=cfg.grad_accum_steps,
    )
    pad_id = run.samples.tokenizer.pad_token_id
    batches = iter(_loader(run.samples, sampler, cfg, pad_id, _cuda(cfg)))
    if rng is not None:  # as they were after the checkpoint's step, for the next one
        set_rng_state(rng)
    params = trainable_parameters(engine.model)
    bar = tqdm(
        total=cfg.steps,
        initial=progress.step,
        desc="train",
        disable=not (cfg.progress and engine.is_main),
    )
    model.train()
    start, done, shown = time.perf_counter(), 0, {}
    while progress.step < cfg.steps:
        micro = [next(batches) for _ in range(cfg.grad_accum_steps)]
        result = _step(engine, model, micro, cfg, params)
        run.sched.step()
        progress.step += 1
        done += 1
        _record(progress, result, run.sched.get_last_lr()[0])
        rate = done * cfg.batch_size / (time.perf_counter() - start)
        last, every = progress.step == cfg.steps, cfg.checkpoint.every_steps
        periodic = bool(cfg.eval_every) and progress.step % cfg.eval_every == 0
        if run.validation is not None and (periodic or last):
            shown = _validate(engine, model, run.validation, cfg, progress)  # stays on the bar
        bar.set_postfix(
            {"loss": f"{progress.history['loss'][-1]:.3f}", "img_s": f"{rate:.1f}", **shown}
        )
        bar.update(1)
        saved = bool(every and (progress.step % every == 0 or last))
        if saved:
            _save(engine, run.sched, progress, run.checkpoints)
        if engine.sum(torch.tensor([float(run.stop.requested)])).item() > 0:
            if not saved:
                _save(engine, run.sched, progress, run.checkpoints)
            raise TrainingInterrupted(f"stopped by SIGTERM at step {progress.step}")
    bar.close()


def _step(
    engine: eng.Engine,
    model: VmadModel,
    micro: list[dict],
    cfg: TrainConfig,
    params: list[torch.nn.Parameter],
) -> _StepResult:
    """One optimiser step over the micro-batches of this rank; returns the step's loss and
    terms summed over ranks."""
    boxes = model.dssl.cfg.boxes if model.dssl is not None else 0
    skipped = sum(b["skipped"] for b in micro)
    known = torch.zeros(3, dtype=torch.float64)  # tokens, masks, skipped (known before forward)
    for b in micro:
        if b["size"]:
            known[0] += answer_tokens(b["labels"])
            known[1] += float((b["input_ids"] == model.seg_token_id).any(1).sum())
    known[2] = skipped
    known = engine.sum(known)
    values = torch.zeros(2 + len(TERMS), dtype=torch.float64)  # loss, TERMS..., DSSL boxes
    balanced = False  # an AMoE-LoRA balancing loss was produced
    for k, batch in enumerate(micro):
        if not batch["size"]:
            if engine.world > 1:
                raise RuntimeError("every sample of a micro-batch was unreadable and skipped")
            continue
        with engine.sync(k == len(micro) - 1), engine.autocast():
            out = engine.model(**model_inputs(batch, model, engine.device))
            local = local_counts(out, batch["labels"], boxes)
            balanced = balanced or out.balance is not None
            dssl = engine.sum(torch.tensor([local["boxes"]], dtype=torch.float64)).item()
            total = {
                "tokens": known[0].item(),
                "masks": known[1].item(),
                "boxes": dssl * len(micro),
                "batches": float(len(micro) * engine.world),
            }
            parts = shares(out, local, total)
            loss = combine(parts, cfg.loss, out.logits)
            engine.backward(loss * engine.world)
        values[0] += float(loss.detach())
        for i, term in enumerate(TERMS, start=1):
            values[i] += float(parts[term].detach()) if term in parts else 0.0
        values[-1] += dssl
    engine.clip(params, cfg.grad_clip)
    engine.optimizer.step()
    engine.optimizer.zero_grad(set_to_none=True)
    summed = engine.sum(values[:-1])  # loss, TERMS...
    counts = {"ce": known[0], "bce": known[1], "dice": known[1], "balance": float(balanced)}
    terms = {}
    for i, term in enumerate(TERMS, start=1):  # a term no sample of the step had: NaN
        had = float(counts.get(term, values[-1])) != 0
        terms[term] = float(summed[i]) if had else float("nan")
    return _StepResult(loss=float(summed[0]), terms=terms, skipped=int(known[2]))


def _record(progress: Progress, result: _StepResult, lr: float) -> None:
    progress.history["loss"].append(result.loss)
    for term in TERMS:  # a term new since the run started: NaN before
        curve = progress.history.setdefault(
            term, [float("nan")] * (len(progress.history["loss"]) - 1)
        )
        curve.append(result.terms[term])
    progress.history["lr"].append(lr)
    progress.skipped += result.skipped


def _validate(engine, model, validation, cfg, progress: Progress) -> dict[str, str]:
    """A validation pass: recorded, the best state kept (rank 0), shown on the bar."""
    result = validate(engine, model, validation, cfg)
    result["step"] = progress.step
    progress.validation.append(result)
    score = result["pixel_auroc"]
    if cfg.keep == "best" and np.isfinite(score):
        best = progress.best
        if best is None or score > best["score"]:
            state = eng.model_state(engine)
            progress.best = {"step": progress.step, "score": score, "state": state}
    model.train()
    return {"val_loss": f"{result['loss']:.3f}", "val_px": f"{score:.3f}"}
