"""AMoE-LoRA as a peft tuner: one expert is plain LoRA, gradients follow the routing, the
balancing loss against a hand computation, the evidence's direction, save/load through peft
(also in a fresh process), no merge, and router statistics by the caller's groups."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import TINY_LLAMA
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from vmad_pipeline.models.amoe_lora import (
    ALL,
    AmoeLoraConfig,
    AmoeLoraLinear,
    AmoeLoraMergeError,
    amoe_layers,
    anomaly_evidence,
    balancing_loss,
    reset_router_stats,
    router_usage,
    routing_inputs,
)
from vmad_pipeline.models.llm import quiet_peft

TARGETS = ["q_proj", "v_proj"]


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, **TINY_LLAMA)).eval()


def amoe(model: nn.Module, **overrides) -> PeftModel:
    fields = dict(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM")
    with quiet_peft():
        return get_peft_model(model, AmoeLoraConfig(**(fields | overrides)))


def token_ids(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def anomaly_share(model: nn.Module, config: AmoeLoraConfig, group: str = ALL) -> float:
    return sum(router_usage(model)["groups"][group]["mean_gate"][config.n_generalist :])


@pytest.mark.parametrize("routing", ["soft", "topk"])
def test_one_generalist_expert_is_plain_lora(routing):
    """One expert, no anomaly experts: the gate is 1 for every token, so it is LoRA itself."""
    base = tiny_llama()
    with quiet_peft():
        lora = get_peft_model(
            copy.deepcopy(base),
            LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False),
        )
    model = amoe(copy.deepcopy(base), n_generalist=1, n_anomaly=0, routing=routing, top_k=1)
    with torch.no_grad():
        for name, layer in amoe_layers(model):
            twin = lora.get_submodule(name)
            layer.amoe_A["default"][0].copy_(twin.lora_A["default"].weight)
            layer.amoe_B["default"][0].copy_(twin.lora_B["default"].weight)
        ids = token_ids()
        want = lora(input_ids=ids).logits
        with anomaly_evidence(model, torch.tensor([0.9, 0.1])):  # no anomaly expert: no effect
            got = model(input_ids=ids).logits
        assert not torch.allclose(want, base(input_ids=ids).logits, atol=1e-3)  # LoRA does act
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_gradients_reach_exactly_the_routed_experts():
    """Top-1: an expert that no token chose gets an all-zero gradient, every chosen one a
    non-zero one. Evidence near 0 keeps the anomaly expert out; near 1 (sample 0) brings it in.
    Only v_proj here, and a loss on every position: a query at a sequence's first position has
    one key to attend to, so it cannot matter, whatever the routing."""
    config = dict(n_generalist=2, n_anomaly=1, routing="topk", top_k=1, init_weights=False)
    model = amoe(tiny_llama(), target_modules=["v_proj"], evidence_scale_init=3.0, **config)
    model.train()
    ids = token_ids()
    for evidence, anomaly_used in ((torch.tensor([1e-4, 1e-4]), False), ([1 - 1e-4, 1e-4], True)):
        model.zero_grad()
        reset_router_stats(model)
        with anomaly_evidence(model, evidence):
            model(input_ids=ids).logits.square().mean().backward()
        usage = router_usage(model, per_layer=True)["layers"]
        for name, layer in amoe_layers(model):
            routed = torch.tensor(usage[name][ALL]["top1_share"]) > 0
            assert routed[2].item() is anomaly_used and routed[:2].any()
            for weights in (layer.amoe_A["default"], layer.amoe_B["default"]):
                has_grad = weights.grad.flatten(1).abs().sum(1) > 0
                assert torch.equal(has_grad, routed), name


class TwoLinears(nn.Module):
    """Two adapted layers reading the same tokens, for the balancing loss by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.first(x) + self.second(x)


# 4 tokens, 2 experts. Router row 0 = (1, 0), row 1 = 0: logits (x0, 0). Tokens x0 = ln 3 three
# times, -ln 3 once: probabilities (3/4, 1/4) x3 and (1/4, 3/4), so P = (5/8, 3/8).
# top-1: f = (3/4, 1/4), loss = 2 (3/4 5/8 + 1/4 3/8) = 9/8. soft: f = P, 2 (25 + 9) / 64 = 17/16.
# top-2: every token uses both, f = (1/2, 1/2), loss = 1.
@pytest.mark.parametrize(
    ("routing", "top_k", "want"), [("topk", 1, 9 / 8), ("soft", 1, 17 / 16), ("topk", 2, 1.0)]
)
def test_balancing_loss_by_hand(routing, top_k, want):
    config = dict(target_modules=["first"], task_type=None, n_generalist=2, n_anomaly=0)
    model = amoe(TwoLinears(), routing=routing, top_k=top_k, **config)
    layer = model.base_model.model.first
    with torch.no_grad():
        layer.amoe_router["default"].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]) * math.log(3)
    model(x)
    assert balancing_loss(model).item() == pytest.approx(want, abs=1e-6)


def test_balancing_loss_is_the_mean_over_layers():
    """Second layer's router at 0: even probabilities, soft loss 1; the mean is (17/16 + 1) / 2."""
    config = dict(target_modules=["first", "second"], task_type=None, n_generalist=1, n_anomaly=1)
    model = amoe(TwoLinears(), **config)
    with torch.no_grad():
        model.base_model.model.first.amoe_router["default"].weight.copy_(
            torch.tensor([[1.0, 0.0], [0.0, 0.0]])
        )
        model.base_model.model.second.amoe_router["default"].weight.zero_()
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]) * math.log(3)
    model(x)
    assert balancing_loss(model).item() == pytest.approx((17 / 16 + 1) / 2, abs=1e-6)


@pytest.mark.parametrize("routing", ["soft", "topk"])
def test_evidence_moves_gates_to_the_anomaly_experts(routing):
    """Documented direction: more evidence, more of the gates on the anomaly experts (strictly
    with soft routing; top-k moves in steps, so never down); None is neutral, the same as 0.5."""
    model = amoe(tiny_llama(), n_generalist=2, n_anomaly=2, routing=routing, top_k=2)
    with torch.no_grad():
        for _, layer in amoe_layers(model):  # a livelier router, so top-k has ties to break
            layer.amoe_router["default"].weight.normal_(std=0.3)
    config = model.peft_config["default"]
    ids = token_ids()
    shares, logits = [], []
    with torch.no_grad():
        for evidence in (0.05, 0.3, None, 0.5, 0.7, 0.95):
            reset_router_stats(model)
            with anomaly_evidence(model, evidence):
                logits.append(model(input_ids=ids).logits)
            shares.append(anomaly_share(model, config))
    assert shares[2] == shares[3] and torch.equal(logits[2], logits[3])
    rising = [shares[i] for i in (0, 1, 2, 4, 5)]
    assert rising == sorted(rising) and rising[0] < rising[-1]
    if routing == "soft":
        assert all(a < b for a, b in zip(rising, rising[1:], strict=False))


def save_adapter(tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Base model and a random (non-trivial) adapter saved under tmp_path; returns the inputs
    (token ids, per-sample evidence) and the logits the adapted model gives for them."""
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    model = amoe(base, init_weights=False, n_generalist=2, n_anomaly=1)
    ids, evidence = token_ids(), torch.tensor([0.8, 0.2])
    with torch.no_grad(), anomaly_evidence(model, evidence):
        want = model(input_ids=ids).logits
    with quiet_peft():
        model.save_pretrained(tmp_path / "adapter")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 4 * 4  # 4 layers x (A, B, router, evidence scale)
    return ids, evidence, want


def test_save_and_load_round_trip_keeps_the_logits(tmp_path):
    """Only adapter weights go to disk; PeftModel.from_pretrained gives identical logits."""
    ids, evidence, want = save_adapter(tmp_path)
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert len(saved) == 4 * 4
    assert all(".amoe_" in key and "base_layer" not in key for key in saved)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "AMOE_LORA" and config["n_anomaly"] == 1
    with quiet_peft():
        loaded = PeftModel.from_pretrained(
            LlamaForCausalLM.from_pretrained(str(tmp_path / "base")), str(tmp_path / "adapter")
        )
    with torch.no_grad(), anomaly_evidence(loaded, evidence):
        assert torch.equal(loaded(input_ids=ids).logits, want)
    assert not any(p.requires_grad for p in loaded.parameters())  # loaded for inference


@pytest.mark.slow
def test_a_fresh_process_loads_the_adapter_after_only_the_import(tmp_path):
    """Registration happens at import: a new interpreter that imports the module (and nothing
    else of ours) loads the adapter with plain peft and gets the same logits."""
    ids, evidence, want = save_adapter(tmp_path)
    torch.save((ids, evidence), tmp_path / "inputs.pt")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    args = [tmp_path / "base", tmp_path / "adapter", tmp_path / "inputs.pt", tmp_path / "out.pt"]
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, *map(str, args)], check=True, env=env)
    assert torch.equal(torch.load(tmp_path / "out.pt"), want)


SRC = str(Path(__file__).resolve().parents[3] / "src")
FRESH_PROCESS = textwrap.dedent(
    """
    import sys, warnings
    import torch
    import vmad_pipeline.models.amoe_lora as amoe_lora  # the only thing loading needs
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    warnings.simplefilter("ignore")
    base, adapter, inputs, out = sys.argv[1:]
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), adapter)
    ids, evidence = torch.load(inputs)
    with torch.no_grad(), amoe_lora.anomaly_evidence(model, evidence):
        torch.save(model(input_ids=ids).logits, out)
    """
)


def test_print_trainable_parameters_counts_the_experts(capsys):
    model = amoe(tiny_llama(), n_generalist=2, n_anomaly=1, r=4)
    per_layer = 3 * 4 * 32 + 3 * 32 * 4 + 32 * 3 + 1  # A, B, router, evidence scale
    model.print_trainable_parameters()
    assert f"trainable params: {4 * per_layer:,}" in capsys.readouterr().out


def test_merge_and_unload_refuses_and_unload_gives_the_base_back():
    base = tiny_llama()
    ids = token_ids()
    with torch.no_grad():
        want = base(input_ids=ids).logits
    model = amoe(base, init_weights=False)
    with pytest.raises(AmoeLoraMergeError, match="cannot be merged into the base weights"):
        model.merge_and_unload()
    with pytest.raises(AmoeLoraMergeError):
        model.merge_adapter()
    plain = model.unload()
    assert not any(isinstance(m, AmoeLoraLinear) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, want, atol=0, rtol=0)


def test_router_usage_groups_by_the_callers_labels():
    model = amoe(tiny_llama(), n_generalist=2, n_anomaly=2)
    config = model.peft_config["default"]
    ids, mask = token_ids(batch=3), torch.ones(3, 7)
    mask[2, 5:] = 0  # two padding tokens, not counted
    groups = ["screw/normal", "screw/anomalous", "screw/normal"]
    with (
        torch.no_grad(),
        routing_inputs(model, evidence=[0.1, 0.9, 0.1], groups=groups, token_mask=mask),
    ):
        model(input_ids=ids)
    usage = router_usage(model)
    assert usage["experts"] == ["generalist_0", "generalist_1", "anomaly_0", "anomaly_1"]
    rows = usage["groups"]
    assert set(rows) == {ALL, "screw/normal", "screw/anomalous"}
    assert [rows[g]["tokens"] for g in (ALL, "screw/normal", "screw/anomalous")] == [19, 12, 7]
    for row in rows.values():
        assert sum(row["mean_gate"]) == pytest.approx(1.0) and sum(
            row["top1_share"]
        ) == pytest.approx(1.0)
    assert anomaly_share(model, config, "screw/anomalous") > anomaly_share(
        model, config, "screw/normal"
    )
    pooled = (
        12 * torch.tensor(rows["screw/normal"]["mean_gate"])
        + 7 * torch.tensor(rows["screw/anomalous"]["mean_gate"])
    ) / 19
    torch.testing.assert_close(torch.tensor(rows[ALL]["mean_gate"]), pooled)

    reset_router_stats(model)
    assert router_usage(model)["groups"] == {}
    with torch.no_grad():
        model(input_ids=ids)  # the block above ended: no groups, no mask, neutral evidence
    assert set(router_usage(model)["groups"]) == {ALL}
    assert router_usage(model)["groups"][ALL]["tokens"] == 21


def test_evidence_must_match_the_batch():
    model = amoe(tiny_llama())
    with (
        pytest.raises(ValueError, match="one value per sample"),
        anomaly_evidence(model, [0.5] * 3),
    ):
        model(input_ids=token_ids(batch=2))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        with anomaly_evidence(model, [1.5, 0.5]):
            pass
