"""AMoE-LoRA inside VMAD: the adapter choice, the routers' evidence, the balancing loss in the
objective, router statistics by group, checkpoint and export round trips."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.models import CFG, batch, tiny_tokenizer
from peft import PeftModel

from vmad_pipeline.configs import AmoeConfig, ConfigError, LossWeights, ModelConfig
from vmad_pipeline.models.amoe_lora import (
    AmoeLoraLinear,
    amoe_layers,
    reset_router_stats,
    router_usage,
)
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.checkpoint import (
    export_model,
    load_checkpoint,
    load_exported,
    save_checkpoint,
)
from vmad_pipeline.models.extras import own_prediction
from vmad_pipeline.training.objective import TERMS, combine, local_counts, shares, weighted_loss
from vmad_pipeline.training.routers import router_metrics, router_summary

AMOE = dataclasses.replace(CFG, adapter="amoe_lora", amoe=AmoeConfig(evidence="own_mask"))


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def amoe_model(tokenizer, cfg=AMOE, seed=0):
    """A tiny VMAD with AMoE-LoRA whose experts and evidence scale are random (a fresh adapter
    is a no-op: B = 0), in eval mode."""
    model = build_vmad(cfg, tokenizer, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in amoe_layers(model.llm):
            for p in layer.amoe_B.values():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            for r in layer.amoe_router.values():
                r.weight.copy_(torch.randn(r.weight.shape, generator=gen))
    return model.eval()


def predict(model, b):
    return model.predict(
        images_clip=b["images_clip"],
        images_sam=b["images_sam"],
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        output_size=(32, 32),
        max_new_tokens=3,
    )


def test_the_adapter_is_chosen_by_config_and_bad_values_are_named(tokenizer):
    lora = build_vmad(CFG, tokenizer)
    amoe = build_vmad(AMOE, tokenizer)
    assert not list(amoe_layers(lora.llm)) and len(list(amoe_layers(amoe.llm))) == 4  # q, v x 2
    assert isinstance(amoe.llm, PeftModel)
    with pytest.raises(ConfigError, match="adapter"):
        ModelConfig(adapter="moe")
    with pytest.raises(ConfigError, match="evidence 'expert' needs"):
        ModelConfig(amoe=AmoeConfig(evidence="expert"))
    with pytest.raises(ConfigError, match="top_k"):
        AmoeConfig(routing="topk", top_k=5)
    assert ModelConfig(adapter="amoe_lora").routing_evidence == "own_mask"  # auto, no expert


def test_the_routers_read_the_own_mask_peak_and_the_pre_pass_reads_none(tokenizer):
    model = amoe_model(tokenizer)
    b = batch(model, tokenizer)
    seen = []
    layer = next(m for _, m in amoe_layers(model.llm))
    hook = layer.register_forward_pre_hook(lambda m, _: seen.append(m.amoe_evidence))
    predict(model, b)
    hook.remove()
    image = model.get_image_features(b["images_clip"])
    own = own_prediction(
        model,
        b["input_ids"],
        b["attention_mask"],
        b["images_clip"],
        b["images_sam"],
        image,
        (32, 32),
    )
    assert seen[0] is None  # the own-mask pre-pass: neutral
    torch.testing.assert_close(seen[1], own.flatten(1).amax(1))  # the answer reads its peak
    assert all(e is not None for e in seen[1:])
    assert layer.amoe_evidence is None  # restored after predict


def test_evidence_changes_the_answer_logits_and_none_is_neutral(tokenizer):
    model = amoe_model(tokenizer)
    with torch.no_grad():
        for _, layer in amoe_layers(model.llm):
            for s in layer.amoe_evidence_scale.values():
                s.fill_(5.0)
    b = batch(model, tokenizer)
    with_evidence = predict(model, b).free_logits
    neutral = dataclasses.replace(model.config, amoe=AmoeConfig(evidence="none"))
    model.config = neutral
    without = predict(model, b).free_logits
    assert not torch.allclose(with_evidence, without, atol=1e-4)


def test_the_balancing_loss_enters_the_objective_and_trains_the_routers(tokenizer):
    model = amoe_model(tokenizer).train()
    b = batch(model, tokenizer)
    out = model(**b)
    assert out.balance is not None and out.balance.requires_grad and out.balance >= 1 - 1e-5
    w = LossWeights(balance=0.0)
    expected = weighted_loss(out, w) + 3.0 * out.balance
    torch.testing.assert_close(weighted_loss(out, dataclasses.replace(w, balance=3.0)), expected)
    # one value per forward: its share of a step of 4 micro-batches over all ranks is 1/4
    local = local_counts(out, b["labels"], 0)
    total = {**local, "batches": 4.0}
    parts = shares(out, local, total)
    torch.testing.assert_close(parts["balance"], out.balance / 4)
    combine(parts, LossWeights(), out.logits).backward()
    routers = [r.weight.grad for _, m in amoe_layers(model.llm) for r in m.amoe_router.values()]
    assert all(g is not None and g.abs().sum() > 0 for g in routers)
    assert "balance" in TERMS


def test_plain_lora_produces_no_balancing_term(tokenizer):
    model = build_vmad(CFG, tokenizer).train()
    b = batch(model, tokenizer)
    out = model(**b)
    assert out.balance is None and local_counts(out, b["labels"], 0)["batches"] == 0.0


def test_router_statistics_count_the_training_forward_once_by_group(tokenizer):
    model = amoe_model(tokenizer).train()
    b = batch(model, tokenizer)
    reset_router_stats(model.llm)
    model(**b, route_groups=["vqa.anomalous", "seg.normal"])
    usage = router_usage(model.llm)
    tokens = int(b["attention_mask"].sum())
    assert usage["groups"]["__all__"]["tokens"] == tokens  # the pre-pass is not counted
    summary = router_summary([usage, usage])  # two ranks with the same statistics
    assert summary["all"]["tokens"] == 2 * tokens
    assert set(summary["task"]) == {"vqa", "seg"} and set(summary["image"]) == set(
        ["normal", "anomalous"]
    )
    row = summary["image"]["anomalous"]
    assert row["tokens"] == 2 * int(b["attention_mask"][0].sum())
    assert row["anomaly_gate"] == pytest.approx(
        row["mean_gate"]["anomaly_0"] + row["mean_gate"]["anomaly_1"]
    )
    assert sum(row["mean_gate"].values()) == pytest.approx(1.0)  # soft routing
    metrics = router_metrics(summary)
    assert metrics["router_anomaly_gate_image_anomalous"] == row["anomaly_gate"]
    assert "router_gate_task_vqa_generalist_0" in metrics and not any(":" in k for k in metrics)


def test_router_summary_weights_ranks_by_their_tokens():
    def usage(gate, tokens):
        row = {"mean_gate": gate, "top1_share": gate, "tokens": tokens}
        return {"experts": ["generalist_0", "anomaly_0"], "groups": {"seg.normal": row}}

    summary = router_summary([usage([1.0, 0.0], 30), usage([0.0, 1.0], 10)])
    assert summary["image"]["normal"]["mean_gate"] == {"generalist_0": 0.75, "anomaly_0": 0.25}
    assert summary["task"]["seg"]["tokens"] == 40
    assert router_summary([{"experts": [], "groups": {}}]) is None


def test_checkpoint_round_trip_keeps_the_amoe_adapter(tokenizer, tmp_path):
    model = amoe_model(tokenizer)
    b = batch(model, tokenizer)
    ref = predict(model, b)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert len(list(amoe_layers(loaded.llm))) == 4
    got = predict(loaded, b)
    torch.testing.assert_close(got.free_logits, ref.free_logits)
    torch.testing.assert_close(got.mask_logits, ref.mask_logits)
    assert got.answer_ids == ref.answer_ids


def test_export_keeps_the_adapter_and_gives_the_trained_outputs(tokenizer, tmp_path):
    model = amoe_model(tokenizer)
    with torch.no_grad():  # trained embeddings (modules_to_save) must travel too
        model.llm.get_input_embeddings().weight.add_(0.1)
    b = batch(model, tokenizer)
    ref, ref_pred = model(**b), predict(model, b)
    export_model(model, tokenizer, tmp_path / "export")
    names = {p.name for p in (tmp_path / "export").iterdir()}
    assert names == {"config.json", "tokenizer", "llm", "adapter", "weights.safetensors", "vision"}
    loaded, _ = load_exported(tmp_path / "export")
    assert any(isinstance(m, AmoeLoraLinear) for m in loaded.modules())
    got = loaded(**b)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.mask_logits, ref.mask_logits, atol=1e-5, rtol=1e-5)
    pred = predict(loaded, b)
    torch.testing.assert_close(pred.free_logits, ref_pred.free_logits, atol=1e-5, rtol=1e-5)
    assert pred.answer_ids == ref_pred.answer_ids


def test_the_expert_source_reads_the_expert_score_and_auto_resolves(tokenizer):
    from types import SimpleNamespace

    from vmad_pipeline.configs import ExpertConfig
    from vmad_pipeline.models.routing import routing_evidence

    with_expert = dataclasses.replace(
        AMOE, amoe=AmoeConfig(), expert=ExpertConfig(name="anomaly_ov")
    )
    assert with_expert.routing_evidence == "expert"
    model = SimpleNamespace(llm=build_vmad(AMOE, tokenizer).llm, config=with_expert)
    score = torch.tensor([0.2, 1.3])
    got = routing_evidence(model, SimpleNamespace(score=score), own=torch.ones(2, 4, 4))
    torch.testing.assert_close(got, torch.tensor([0.2, 1.0]))  # clamped into [0, 1]
    model.config = dataclasses.replace(with_expert, amoe=AmoeConfig(evidence="none"))
    assert routing_evidence(model, SimpleNamespace(score=score), own=None) is None
