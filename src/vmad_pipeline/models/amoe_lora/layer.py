"""The AMoE-LoRA layer: an ``nn.Linear`` wrapped with routed LoRA experts (peft's
``BaseTunerLayer``). What it computes (details and reasons in ``docs/amoe_lora.md``):

- ``n_generalist`` then ``n_anomaly`` LoRA experts (rank ``r``, scaling ``lora_alpha / r``) and a
  router, a bias-free linear layer on the layer's input, giving one logit per expert and token
  (the MoE-LoRA pattern, e.g. Dou et al., "LoRAMoE", 2023).
- Anomaly awareness: the caller gives each sample an anomaly-evidence scalar e in [0, 1] (e.g. an
  anomaly expert's image score). The anomaly experts' logits get ``softplus(s) * logit(e)`` added,
  s a learned scalar per layer: evidence above 0.5 moves gate mass to the anomaly experts, below
  0.5 to the generalists, monotonically (softplus keeps the factor >= 0). ``None`` means "no
  evidence", the same as 0.5: logit 0, routing on token content alone.
- Routing ``soft`` (softmax over all experts) or ``topk`` (Mixtral-style, Jiang et al. 2024;
  gates are the top-k probabilities, optionally renormalised).
- Switch-Transformer balancing loss (Fedus et al. 2021): n * sum_i f_i * P_i per layer (averaged
  over layers by ``model.balancing_loss``). f_i: share of the token's top-k assignments (soft
  routing: the mean probability). The evidence shift enters P_i detached, so balancing cannot
  switch the conditioning off.
- Router statistics per expert since the last reset, split by per-sample group labels.
- No merge: the mix depends on the token and the evidence, so there is no single weight delta.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from vmad_pipeline.models.amoe_lora.config import AmoeLoraConfig

ALL = "__all__"  # router_usage's group of every token
EVIDENCE_EPS = 1e-4  # evidence is clamped to [eps, 1 - eps] before the logit: |shift| <= 9.2 s
MERGE_ERROR = (
    "AMoE-LoRA cannot be merged into the base weights: each token's mix of experts depends on the "
    "token and on the anomaly evidence, so there is no single weight delta to add. Export the base "
    "model together with the saved adapter (save_pretrained / PeftModel.from_pretrained) instead; "
    "unload() gives back the plain base model without the adapter."
)


class AmoeLoraMergeError(NotImplementedError):
    """Raised by every merge path (merge_and_unload, merge_adapter, layer.merge)."""


class AmoeLoraLayer(BaseTunerLayer):
    """peft's bookkeeping for AMoE-LoRA layers: which attributes hold per-adapter weights."""

    adapter_layer_names = ("amoe_A", "amoe_B", "amoe_router", "amoe_evidence_scale")
    other_param_names = ("amoe_dropout", "amoe_scaling", "amoe_config")


class AmoeLoraLinear(nn.Module, AmoeLoraLayer):
    """An ``nn.Linear`` plus routed LoRA experts: y = W x + (alpha / r) sum_e g_e(x, ev) B_e A_e x.

    The per-batch inputs (evidence, group labels, token mask) are plain attributes set by
    ``set_routing_inputs``; the latest balancing loss and the accumulated router statistics stay
    here too, none of them in the state dict (only the weights are saved)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: AmoeLoraConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"AMoE-LoRA adapts nn.Linear layers only, not {type(base).__name__}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.amoe_A = nn.ParameterDict()  # adapter -> [E, r, in]
        self.amoe_B = nn.ParameterDict()  # adapter -> [E, out, r]
        self.amoe_router = nn.ModuleDict()  # adapter -> Linear(in, E, bias=False)
        self.amoe_evidence_scale = nn.ParameterDict()  # adapter -> raw s (softplus(s) is used)
        self.amoe_dropout = nn.ModuleDict()
        self.amoe_scaling: dict[str, float] = {}
        self.amoe_config: dict[str, AmoeLoraConfig] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self.amoe_evidence: torch.Tensor | None = None
        self.amoe_groups: tuple[str, ...] | None = None
        self.amoe_token_mask: torch.Tensor | None = None
        self.amoe_record = True  # add this forward's routing to the statistics
        self.amoe_balance: dict[str, torch.Tensor] = {}
        self.amoe_stats: dict[str, dict[str, list[torch.Tensor]]] = {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: AmoeLoraConfig) -> None:
        n, r = config.n_experts, config.r
        self.amoe_A[adapter_name] = nn.Parameter(torch.empty(n, r, self.in_features))
        self.amoe_B[adapter_name] = nn.Parameter(torch.zeros(n, self.out_features, r))
        self.amoe_router[adapter_name] = nn.Linear(self.in_features, n, bias=False)
        raw = config.evidence_scale_init + math.log(-math.expm1(-config.evidence_scale_init))
        self.amoe_evidence_scale[adapter_name] = nn.Parameter(torch.tensor(raw))
        p = config.lora_dropout
        self.amoe_dropout[adapter_name] = nn.Dropout(p) if p > 0 else nn.Identity()
        self.amoe_scaling[adapter_name] = config.lora_alpha / r
        self.amoe_config[adapter_name] = config
        self.reset_parameters(adapter_name)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    @torch.no_grad()
    def reset_parameters(self, adapter_name: str) -> None:
        """A as nn.Linear / LoRA initialise it (per expert); B zero unless init_weights=False."""
        config = self.amoe_config[adapter_name]
        a, b = self.amoe_A[adapter_name], self.amoe_B[adapter_name]
        for e in range(config.n_experts):
            nn.init.kaiming_uniform_(a[e], a=math.sqrt(5))
            if not config.init_weights:
                nn.init.normal_(b[e], std=1.0 / config.r)
        nn.init.normal_(self.amoe_router[adapter_name].weight, std=config.router_init_std)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        result_dtype = result.dtype
        for adapter in self.active_adapters:
            if adapter not in self.amoe_A:
                continue
            a, b = self.amoe_A[adapter], self.amoe_B[adapter]
            n, r = a.shape[0], a.shape[1]
            x = self._cast_input_dtype(x, a.dtype)
            gates = self._route(x, adapter).to(a.dtype)  # [..., E]
            # all experts as one rank-(E r) LoRA with the gates between A and B: two matmuls
            h = F.linear(self.amoe_dropout[adapter](x), a.reshape(n * r, self.in_features))
            h = (h.unflatten(-1, (n, r)) * gates.unsqueeze(-1)).flatten(-2)
            b_all = b.permute(1, 0, 2).reshape(self.out_features, n * r)
            result = result + F.linear(h, b_all) * self.amoe_scaling[adapter]
        return result.to(result_dtype)

    def _route(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """Per-token gates [..., E]; records the layer's balancing loss and usage statistics."""
        config = self.amoe_config[adapter]
        router = self.amoe_router[adapter]
        logits = router(x.to(router.weight.dtype)).float()
        anomaly = (
            torch.arange(config.n_experts, device=logits.device) >= config.n_generalist
        ).float()
        scale = F.softplus(self.amoe_evidence_scale[adapter].float())
        ev_logit = self._evidence_logit(logits.shape[:-1], logits.device)
        probs = torch.softmax(logits + (scale * ev_logit).unsqueeze(-1) * anomaly, dim=-1)
        probs_for_loss = probs
        if scale.requires_grad and torch.is_grad_enabled():
            shift = (scale.detach() * ev_logit).unsqueeze(-1) * anomaly
            probs_for_loss = torch.softmax(logits + shift, dim=-1)
        if config.routing == "soft":  # f_i is the mean probability, as P_i (shift detached)
            gates, assigned = probs, probs_for_loss
        else:
            top_p, idx = probs.topk(config.top_k, dim=-1)
            if config.topk_renormalize:
                top_p = top_p / top_p.sum(-1, keepdim=True)
            gates = torch.zeros_like(probs).scatter(-1, idx, top_p)
            assigned = torch.zeros_like(probs).scatter(-1, idx, 1.0 / config.top_k)
        weight = self._token_weight(logits.shape[:-1], logits.device)
        n, w = config.n_experts, weight.unsqueeze(-1)
        f = (assigned * w).reshape(-1, n).sum(0) / weight.sum().clamp_min(1)
        p = (probs_for_loss * w).reshape(-1, n).sum(0) / weight.sum().clamp_min(1)
        self.amoe_balance[adapter] = n * (f * p).sum()
        self._record_usage(adapter, gates.detach(), probs.detach(), weight)
        return gates

    def _evidence_logit(self, lead: torch.Size, device: torch.device) -> torch.Tensor:
        """logit(evidence) shaped to broadcast over the tokens' leading dims (0 when unset)."""
        ev = self.amoe_evidence
        if ev is None:
            return torch.zeros((), device=device)
        ev = ev.to(device=device, dtype=torch.float32)
        if ev.dim() == 1:
            if len(lead) == 0 or lead[0] != ev.shape[0]:
                raise ValueError(
                    f"anomaly evidence has {ev.shape[0]} entries but the layer's input has leading "
                    f"shape {tuple(lead)}: give one value per sample of the batch being run "
                    "(repeat it for beams / returned sequences)"
                )
            ev = ev.reshape(ev.shape[0], *([1] * (len(lead) - 1)))
        return torch.logit(ev, eps=EVIDENCE_EPS)

    def _token_weight(self, lead: torch.Size, device: torch.device) -> torch.Tensor:
        """1 per counted token: the token mask if one is set (it must match), else all ones."""
        mask = self.amoe_token_mask
        if mask is None:
            return torch.ones(lead, device=device)
        if tuple(mask.shape) != tuple(lead):
            raise ValueError(
                f"token mask {tuple(mask.shape)} does not match the layer's tokens {tuple(lead)}"
            )
        return mask.to(device=device, dtype=torch.float32)

    @torch.no_grad()
    def _record_usage(
        self, adapter: str, gates: torch.Tensor, probs: torch.Tensor, weight: torch.Tensor
    ) -> None:
        """Adds, per group, the summed gates, the top-1 counts and the token count (float64)."""
        if not self.amoe_record:
            return
        n = gates.shape[-1]
        top1 = F.one_hot(probs.argmax(-1), n).to(gates.dtype)
        g, t = gates * weight.unsqueeze(-1), top1 * weight.unsqueeze(-1)
        stats = self.amoe_stats.setdefault(adapter, {})
        rows = {ALL: (g.reshape(-1, n).sum(0), t.reshape(-1, n).sum(0), weight.sum())}
        groups = self.amoe_groups
        if groups is not None:
            if weight.dim() == 0 or weight.shape[0] != len(groups):
                raise ValueError(f"{len(groups)} group labels for a batch of {weight.shape[:1]}")
            gs, ts = g.reshape(len(groups), -1, n).sum(1), t.reshape(len(groups), -1, n).sum(1)
            ws = weight.reshape(len(groups), -1).sum(1)
            for label in dict.fromkeys(groups):
                idx = torch.tensor(
                    [i for i, x in enumerate(groups) if x == label], device=ws.device
                )
                rows[label] = (gs[idx].sum(0), ts[idx].sum(0), ws[idx].sum())
        for label, row in rows.items():
            row = [v.double() for v in row]
            if label in stats:
                stats[label] = [old + new for old, new in zip(stats[label], row, strict=True)]
            else:
                stats[label] = row

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise AmoeLoraMergeError(MERGE_ERROR)

    def unmerge(self) -> None:
        """Nothing is ever merged, so there is nothing to undo."""

    def __repr__(self) -> str:
        return "amoe_lora." + super().__repr__()
