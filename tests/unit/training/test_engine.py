"""The distributed engine on CPU processes (gloo): N processes at the same global batch learn
as one; FSDP shards and matches DDP; gradient accumulation; DSSL's queues see the global batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers.training import MODEL, corpus, trainable

from vmad_pipeline.configs import TrainConfig
from vmad_pipeline.configs.train import CheckpointConfig, EngineConfig
from vmad_pipeline.training.fit import fit_vmad


def run(tmp_path, data, **overrides):
    rows, roots, qa, tok = data
    base = dict(
        steps=3,
        batch_size=4,
        warmup_steps=1,
        progress=False,
        paste_prob=0.5,
        detect_paste_prob=0.5,
        num_threads=1,
        checkpoint=CheckpointConfig(dir=str(tmp_path / "ckpt")),
    )
    cfg = TrainConfig(**{**base, **overrides})
    return fit_vmad(rows, roots, qa, tok, cfg, MODEL)


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, worst


def test_two_processes_at_half_the_batch_learn_as_one(tmp_path):
    """K = 3 steps, DSSL on (its queues gather both ranks' features), pasted anomalies: the
    trainable weights of 2 gloo processes x 2 images equal those of 1 process x 4 images to
    float rounding (sums taken in another order: 1e-5), and so do the curves and the queues."""
    data = corpus(tmp_path)
    one = run(tmp_path / "a", data)
    two = run(tmp_path / "b", data, engine=EngineConfig(processes=2))
    assert_close(trainable(one.model), trainable(two.model), atol=1e-5)
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
    global MODEL
    saved, MODEL = (
        MODEL,
        dataclasses.replace(MODEL, dssl=dataclasses.replace(MODEL.dssl, enabled=False)),
    )
    try:
        whole = run(tmp_path / "a", data)
        accum = run(tmp_path / "b", data, grad_accum_steps=2)
    finally:
        MODEL = saved
    assert_close(trainable(whole.model), trainable(accum.model), atol=1e-5)


def test_batch_not_divisible_is_refused():
    from vmad_pipeline.configs import ConfigError

    with pytest.raises(ConfigError, match="divisible"):
        TrainConfig(batch_size=6, grad_accum_steps=4)
