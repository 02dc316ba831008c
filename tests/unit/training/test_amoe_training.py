"""Training with AMoE-LoRA: the balancing term's curve, the router statistics in the summary."""

from __future__ import annotations

import dataclasses
import math

from helpers.training import MODEL, corpus, fit, train_config

from vmad_pipeline.configs import AmoeConfig, TaskMix


def test_amoe_training_records_the_balance_curve_and_router_statistics(tmp_path):
    data = corpus(tmp_path)
    model = dataclasses.replace(MODEL, adapter="amoe_lora", amoe=AmoeConfig(evidence="own_mask"))
    trained = fit(
        data,
        train_config(tmp_path, steps=3, task_mix=TaskMix(seg=0.5, seg_answer=0.0, vqa=0.5)),
        model,
    )
    balance = trained.curves["balance"]
    assert len(balance) == 3 and all(math.isfinite(v) and v >= 0.99 for v in balance)
    router = trained.summary["router"]
    assert set(router["image"]) == {"normal", "anomalous"}
    assert set(router["task"]) <= {"seg", "vqa"} and router["task"]
    # 3 steps of batch 4: every sample's attended tokens, once per layer pooled
    assert router["all"]["tokens"] == sum(r["tokens"] for r in router["image"].values())
    assert trained.summary["params_adapter"] > 0


def test_plain_lora_training_has_no_router_statistics(tmp_path):
    data = corpus(tmp_path)
    trained = fit(data, train_config(tmp_path, steps=2))
    assert "router" not in trained.summary
    assert all(math.isnan(v) for v in trained.curves["balance"])
