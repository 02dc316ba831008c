"""The distributed engine on CPU processes (gloo): N processes at the same global batch learn
as one; FSDP shards and matches DDP; gradient accumulation; DSSL's queues see the global batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers.training import MODEL, corpus, fit, train_config, trainable

from vmad_pipeline.configs import TrainConfig
from vmad_pipeline.configs.train import CheckpointConfig, EngineConfig


def run(tmp_path, data, model=None, **overrides):
    """3 steps, no periodic checkpoint."""
    ckpt = CheckpointConfig(dir=str(tmp_path / "ckpt"))
    cfg = train_config(tmp_path, **{"steps": 3, "checkpoint": ckpt, **overrides})
    return fit(data, cfg, model)


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, worst


def test_two_processes_at_half_the_batch_learn_as_one(tmp_path):
    """K = 3 steps, DSSL on (its queues gather both ranks' features), pasted anomalies: 2 gloo
    processes x 2 images learn as 1 process x 4 images.

    What "as one" can mean for the weights: the two runs sum the same gradients in another
    order, so the sums differ by float rounding (the curves agree to ~1e-7 relative). AdamW then
    divides each coordinate's step by its own gradient's size: where a coordinate's gradient is
    large, rounding stays rounding (1e-6 here), but where the per-sample contributions cancel
    to ~0, the ratio m / (sqrt(v) + eps) is rounding over rounding and the step can take any
    value up to the learning rate, in either run. So: nearly every coordinate agrees to 1e-5,
    and the few whose gradient cancelled agree only to within twice the sum of the learning
    rates the steps used. Measured (torch 2.14.1, transformers 5.25, accelerate 1.16): one
    coordinate of 180k (a DSSL head weight) differs by 5.3e-5; the next worst, 1.6e-6. A real
    divergence (a term gathered or normalised differently) would move the curves and many
    coordinates, which the assertions below catch."""
    data = corpus(tmp_path)
    one = run(tmp_path / "a", data)
    two = run(tmp_path / "b", data, engine=EngineConfig(processes=2))
    a, b = trainable(one.model), trainable(two.model)
    lrs = [0.0, *one.curves["lr"][:-1]]  # the rate each step used (the curve is after it)
    assert_close(a, b, atol=2 * sum(lrs))
    off = sum(int(((a[k] - b[k]).abs() > 1e-5).sum()) for k in a)
    assert off <= sum(v.numel() for v in a.values()) // 10_000, off
    np.testing.assert_allclose(one.curves["loss"], two.curves["loss"], rtol=1e-5)
    np.testing.assert_allclose(one.curves["pbsd"], two.curves["pbsd"], rtol=1e-4, atol=1e-6)
    q1, q2 = one.model.dssl.queue_t, two.model.dssl.queue_t
    assert torch.equal(q1.count, q2.count) and torch.allclose(q1.feats, q2.feats, atol=1e-5)
    assert two.summary["processes"] == 2


def test_fsdp_shards_and_learns_as_ddp(tmp_path):
    data = corpus(tmp_path)
    ddp = run(tmp_path / "a", data, engine=EngineConfig(processes=2))
    fsdp = run(tmp_path / "b", data, engine=EngineConfig(processes=2, strategy="fsdp"))
    assert_close(trainable(ddp.model), trainable(fsdp.model), atol=1e-5)


def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
    """Without DSSL (whose queue takes the first micro-batch's features before the second is
    seen, a different bank than one batch has): 2 accumulation steps of 2 = one batch of 4."""
    data = corpus(tmp_path)
    no_dssl = dataclasses.replace(MODEL, dssl=dataclasses.replace(MODEL.dssl, enabled=False))
    whole = run(tmp_path / "a", data, no_dssl)
    accum = run(tmp_path / "b", data, no_dssl, grad_accum_steps=2)
    assert_close(trainable(whole.model), trainable(accum.model), atol=1e-5)


def test_batch_not_divisible_is_refused():
    from vmad_pipeline.configs import ConfigError

    with pytest.raises(ConfigError, match="divisible"):
        TrainConfig(batch_size=6, grad_accum_steps=4)


def test_deepspeed_is_refused_on_a_cpu_naming_what_it_needs(tmp_path):
    data = corpus(tmp_path)
    cfg = train_config(tmp_path, engine=EngineConfig(strategy="deepspeed_zero2"), device="cpu")
    with pytest.raises(RuntimeError, match="deepspeed_zero2 needs CUDA GPUs"):
        fit(data, cfg)
    assert not (tmp_path / "ckpt").exists()  # refused before anything was written


def test_the_shipped_deepspeed_configs_take_the_training_settings():
    from helpers import REPO

    from vmad_pipeline.training.engine import deepspeed_config

    settings = {"micro_batch": 2, "accum": 10, "grad_clip": 1.0, "bf16": True}
    for stage in (2, 3):
        config = deepspeed_config(REPO / f"conf/engine/deepspeed_zero{stage}.json", settings)
        assert config["zero_optimization"]["stage"] == stage
        assert config["train_micro_batch_size_per_gpu"] == 2
        assert config["gradient_accumulation_steps"] == 10
        assert config["bf16"] == {"enabled": True} and config["gradient_clipping"] == 1.0
