"""Training as one library call: the tokenizer, then the model built from its preset and trained
on the training rows. The train pipeline and the ablation both call these."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from vmad_pipeline.annotation.geometry import LOCATIONS
from vmad_pipeline.annotation.templates import normal_answer
from vmad_pipeline.configs import ModelConfig, TrainConfig, to_dict
from vmad_pipeline.configs.evaluate import EvaluateConfig
from vmad_pipeline.configs.train import RUN_ONLY
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.llm import ADAPTER_PREFIXES
from vmad_pipeline.models.vmad import VmadModel
from vmad_pipeline.placement import peak_memory_mb, resolve_placement
from vmad_pipeline.training.calibration import calibrate_model
from vmad_pipeline.training.data import (
    SampleSpec,
    TrainingSamples,
    answer_texts,
    conversation_texts,
)
from vmad_pipeline.training.engine import check_strategy
from vmad_pipeline.training.expert_stage import expert_stage, freeze_expert, stage_key
from vmad_pipeline.training.launch import distributed_env, launch
from vmad_pipeline.training.loop import seed_everything, train
from vmad_pipeline.training.state import Checkpoints, stable_hash
from vmad_pipeline.training.tokenizer import train_tokenizer
from vmad_pipeline.training.type_head import fit_type_head
from vmad_pipeline.training.validation import validation_rows

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
    summary: dict[str, Any]  # sizes, time, final loss, cost
    validation: list[dict]  # the validation passes (step, losses, pixel AUROC)


@dataclass
class TrainJob:
    """Everything a training process needs (picklable: spawned workers receive it)."""

    rows: pd.DataFrame  # the rows trained on
    val_rows: pd.DataFrame  # the held-out slice of the training classes
    roots: dict[str, str]
    qa: dict[tuple[str, str], dict]
    tokenizer: PreTrainedTokenizerBase
    cfg: TrainConfig
    model_cfg: ModelConfig
    train_classes: list[str]
    trained_on: dict
    data_hash: str
    expert_state: dict | None = None  # the anomaly expert's stage-1 weights (frozen in stage 2)
    # what train.synthesis (generated | both) paints with: a synthesis.render.Painter
    painter: Any = None


def make_job(rows, roots, riad_qa, tokenizer, cfg, model_cfg, trained_on=None) -> TrainJob:
    """Split off the validation slice and hash the data the run depends on."""
    qa = qa_lookup(riad_qa)
    v = cfg.validation
    train_rows, val_rows = validation_rows(rows, v.fraction, v.max_images, cfg.seed, v.anomalous)
    return TrainJob(
        rows=train_rows,
        val_rows=val_rows,
        roots=dict(roots),
        qa=qa,
        tokenizer=tokenizer,
        cfg=cfg,
        model_cfg=model_cfg,
        train_classes=sorted(set(rows["category"])),
        trained_on=dict(trained_on or {}),
        data_hash=data_hash(rows, qa, tokenizer),
    )


def data_hash(rows: pd.DataFrame, qa: dict, tokenizer) -> str:
    """What the training data are: the rows (files by content hash), their RIAD answers and the
    tokenizer's vocabulary."""
    cols = [
        c for c in ("source", "category", "image_path", "mask_path", "label", "sha256") if c in rows
    ]
    records = rows[cols].astype(str).values.tolist()
    answers = sorted(
        (k, {f: str(v) for f, v in qa[k].items()})
        for k in map(tuple, rows[["source", "image_path"]].values)
        if k in qa
    )
    return stable_hash(
        {"rows": records, "qa": answers, "vocab": sorted(tokenizer.get_vocab().items())}
    )


def resume_params(cfg: TrainConfig, model_cfg: ModelConfig) -> dict:
    """The parameters that decide what training computes (``RUN_ONLY`` left out)."""
    params = to_dict(cfg)
    for key in RUN_ONLY:
        head, _, tail = key.partition(".")
        if tail:
            params[head].pop(tail, None)
        else:
            params.pop(head, None)
    return {"train": params, "model": to_dict(model_cfg)}


def _build(job: TrainJob) -> VmadModel:
    seed_everything(job.cfg.seed)
    _, dtype = resolve_placement(job.cfg.device, job.cfg.precision)
    model = build_vmad(  # loaded in the training precision: a 7B checkpoint at half the memory
        job.model_cfg,
        job.tokenizer,
        seed=job.cfg.seed,
        train_classes=job.train_classes,
        dtype=dtype,
    )
    model.trained_on = dict(job.trained_on)
    if model.expert is not None:
        if job.expert_state is None:
            raise ValueError("the anomaly expert needs its stage-1 weights (fit_expert) first")
        freeze_expert(model, job.expert_state)
    return model


def _spec(model: VmadModel) -> SampleSpec:
    dssl = model.dssl.cfg if model.dssl is not None else None
    return SampleSpec(
        size=model.config.sam.image_size,
        slots=model.image_slots,
        seg_first=model.config.seg_first,
        classes=tuple(model.config.dssl.classes),
        boxes=dssl.boxes if dssl else 0,
        box_min=dssl.box_min if dssl else 0.0,
        box_max=dssl.box_max if dssl else 0.0,
        region_oracle=model.config.region_tokens.oracle_prob,
        references=model.cue is not None,
    )


def fit_expert(job: TrainJob, *, cached_only: bool = False) -> dict:
    """Stage 1 (``training.expert_stage``): the anomaly expert trained alone on the rows
    instruction tuning will train on (``job.rows``: the validation slice left out), or reused
    when its inputs did not change (``cached_only``: never trained here). {} without an
    expert."""
    cfg, model_cfg = job.cfg, job.model_cfg
    if not model_cfg.expert.enabled:
        return {}
    seed_everything(cfg.seed)
    device, dtype = resolve_placement(cfg.device, cfg.precision)
    model = build_vmad(
        model_cfg, job.tokenizer, seed=cfg.seed, train_classes=job.train_classes, dtype=dtype
    )
    # stage 1 trains on pasted anomalies whatever train.synthesis says (its key ignores it)
    pasted = dataclasses.replace(cfg, synthesis="paste")
    samples = TrainingSamples(job.rows, job.roots, job.qa, pasted, _spec(model), job.tokenizer)
    key = stage_key(cfg, model_cfg, job.data_hash)
    pad_id = job.tokenizer.pad_token_id
    return expert_stage(model, samples, cfg, pad_id, key, device=device, cached_only=cached_only)


def run_job(job: TrainJob) -> dict | None:
    """Train in this process (one of the run's ranks). Rank 0 returns the model, the progress
    and the run's cost; the others None."""
    model = _build(job)
    cfg, spec = job.cfg, _spec(model)
    samples = TrainingSamples(
        job.rows, job.roots, job.qa, cfg, spec, job.tokenizer, painter=job.painter
    )
    val = None
    if len(job.val_rows):
        val = TrainingSamples(job.val_rows, job.roots, job.qa, cfg, spec, job.tokenizer, fixed=True)
    params = resume_params(cfg, job.model_cfg)
    if job.painter is not None:  # generated anomalies: resume only with the same generator
        params["generator_key"] = job.painter.key
    checkpoints = Checkpoints(cfg.checkpoint.dir, params, job.data_hash, cfg.checkpoint.keep)
    start = time.perf_counter()
    progress = train(model, job.tokenizer, samples, cfg, validation=val, checkpoints=checkpoints)
    seconds = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    ran = cfg.steps - progress.resumed_from
    cost = {
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "steps_this_run": ran,
        "train_seconds": round(seconds, 2),
        "images_per_s": round(ran * cfg.batch_size / seconds, 2) if ran else None,
        **peak_memory_mb(),
    }
    return {"model": model, "progress": progress, "cost": cost}


def _rank0_result(job: TrainJob) -> dict | None:
    """A worker's entry: the trained state (trainable weights and buffers) instead of the model,
    which the launching process rebuilds (a model with its frozen 7B does not travel by pickle)."""
    out = run_job(job)
    if out is None:
        return None
    out.pop("model")
    out["state"] = out["progress"].state
    out["progress"].state = out["progress"].best = None
    return out


def fit_vmad(
    job: TrainJob,
    *,
    evaluate: EvaluateConfig | None = None,
    expert: dict | None = None,
    painter: Any = None,
) -> Trained | None:
    """Build the preset (its DSSL queues: one row per training class), train it with LoRA on
    ``job.rows`` (every image of the training classes but the validation slice), in this process
    or in ``cfg.engine.processes`` local workers, then, given ``evaluate`` (the score rule and
    decoding budget every entry point scores by), calibrate its decision thresholds on the
    validation slice (``training.calibration``): the model returned is the one to ship.
    ``expert``: the anomaly expert's stage 1 (:func:`fit_expert`; computed here when the model
    has an expert and it is not given). ``painter``: what ``train.synthesis`` (generated | both)
    paints anomalies with (a ``synthesis.render.Painter``; it travels to the workers with the
    job). Under an outside launcher (torchrun, accelerate launch: ``WORLD_SIZE`` set) this
    process is one rank; ranks other than 0 return None."""
    cfg = job.cfg
    cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    check_strategy(cfg.engine, cpu)
    if job.model_cfg.expert.enabled:
        # the ranks of a launched run read the one stage 1 (each training its own could differ)
        expert = expert or fit_expert(job, cached_only=distributed_env())
        job = dataclasses.replace(job, expert_state=expert["state"])
    if cfg.synthesis != "paste" and painter is None:
        raise ValueError(
            f"train.synthesis={cfg.synthesis} paints generated anomalies: fit_vmad needs the "
            "defect generator's painter (painter=)"
        )
    job = dataclasses.replace(job, painter=painter)
    out = _train(job)
    if out is None:
        return None  # not rank 0: rank 0 reports
    trained = _trained(job, out)
    if expert:
        losses = expert.get("losses") or [None]
        trained.summary["expert_stage"] = {
            "key": expert["key"],
            "reused": expert.get("reused", False),
            "seconds": expert.get("seconds"),
            "final_loss": losses[-1],
        }
    if evaluate is not None:
        calibrate_model(
            trained.model, job.tokenizer, job.val_rows, job.roots, cfg.calibration, evaluate
        )
    if cfg.type_head.enabled:
        head = fit_type_head(trained.model, job.rows, job.roots, cfg.type_head)
        trained.model.type_head = None if head is None else head.to_json()
        if head is not None:  # in brief (config.json holds the whole choice)
            held = head.meta["held_out_classes"]
            trained.summary["type_head"] = {
                "types": len(head.types),
                "images": head.meta["n_images"],
                "min_probability": head.min_probability,
                "held_out_precision": held["precision"],
                "held_out_named_share": held["named_share"],
            }
    return trained


def _train(job: TrainJob) -> dict | None:
    """:func:`run_job` in this process (one rank of a launched run) or in local workers whose
    rank 0 hands back the trained state, loaded here into a model of its own."""
    cfg = job.cfg
    processes = cfg.engine.processes
    if processes == 1 or distributed_env():
        return run_job(job)
    _check_gpus(cfg)
    threads = max(1, (cfg.num_threads or torch.get_num_threads()) // processes)
    out = launch(_rank0_result, (job,), processes, threads)
    model = _build(job)
    missing, unexpected = model.load_state_dict(out.pop("state"), strict=False)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or trained & set(missing):
        raise RuntimeError(f"trained state does not fit the model: {unexpected or missing}")
    out["model"] = model.eval()
    return out


def _check_gpus(cfg: TrainConfig) -> None:
    """One GPU per process: more processes than GPUs is refused before anything starts."""
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return
    if cfg.engine.processes > torch.cuda.device_count():
        raise ValueError(
            f"train.engine.processes={cfg.engine.processes} but this machine has "
            f"{torch.cuda.device_count()} GPU(s); one process per GPU"
        )


def _is_adapter(name: str) -> bool:
    return any(prefix in name for prefix in ADAPTER_PREFIXES)


def _trained(job: TrainJob, out: dict) -> Trained:
    model, progress, cfg = out["model"], out["progress"], job.cfg
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    summary = {
        "train_images": len(job.rows),
        "validation_images": len(job.val_rows),
        "steps": cfg.steps,
        **out["cost"],
        "params_trainable": n_train,
        "params_total": n_total,
        "visual_tokens": model.image_slots.total,
        "final_loss": progress.history["loss"][-1],
        "skipped_images": progress.skipped,
        "strategy": cfg.engine.strategy,
    }
    adapter = [p for n, p in model.llm.named_parameters() if p.requires_grad and _is_adapter(n)]
    summary["params_adapter"] = sum(p.numel() for p in adapter)  # LoRA / AMoE-LoRA weights alone
    if progress.router is not None:
        summary["router"] = progress.router  # AMoE-LoRA's routing per task and image state
    if progress.best is not None:
        summary["best_step"] = progress.best["step"]
    log.info(
        "trained %d steps (%d in this run) in %.1f s (%d / %d parameters trainable)",
        cfg.steps,
        out["cost"]["steps_this_run"],
        out["cost"]["train_seconds"],
        n_train,
        n_total,
    )
    return Trained(model, job.tokenizer, progress.history, summary, progress.validation)
