"""MAU-GPT's AMoE-LoRA (Anomaly-aware Mixture of Experts with LoRA) as a peft tuner.

The seed's part (``shared/seeds/003_...``, the MAU-GPT abstract): the LLM is adapted by LoRA
experts of two kinds, *anomaly-aware* and *generalist*, that collaborate adaptively. Nothing more.

Ours (details and reasons in ``docs/amoe_lora.md``):

- Every adapted linear layer holds ``n_generalist`` then ``n_anomaly`` LoRA experts (rank ``r``,
  scaling ``lora_alpha / r``) and a router, a bias-free linear layer on the layer's input, giving
  one logit per expert and token (the MoE-LoRA pattern, e.g. Dou et al., "LoRAMoE", 2023).
- Anomaly awareness: the caller gives each sample an anomaly-evidence scalar e in [0, 1] (e.g. an
  anomaly expert's image score). The anomaly experts' logits get ``softplus(s) * logit(e)`` added,
  s a learned scalar per layer: evidence above 0.5 moves gate mass to the anomaly experts, below
  0.5 to the generalists, monotonically (softplus keeps the factor >= 0). ``None`` means "no
  evidence", the same as 0.5: logit 0, routing on token content alone.
- Routing ``soft`` (softmax over all experts) or ``topk`` (Mixtral-style, Jiang et al. 2024;
  gates are the top-k probabilities, optionally renormalised).
- Switch-Transformer balancing loss (Fedus et al. 2021): n * sum_i f_i * P_i per layer, averaged
  over layers. f_i: share of the token's top-k assignments (soft routing: the mean probability).
  The evidence shift enters P_i detached, so balancing cannot switch the conditioning off.
- Router statistics per expert since the last reset, split by per-sample group labels.
- No merge: the mix depends on the token and the evidence, so there is no single weight delta.

The peft side: a tuner type ``"AMOE_LORA"`` (``AmoeLoraConfig`` + ``AmoeLoraModel(BaseTuner)`` +
``AmoeLoraLinear(BaseTunerLayer)``) written into peft's registries at import, so ``get_peft_model``,
``save_pretrained``, ``PeftModel.from_pretrained`` and ``print_trainable_parameters`` work as for
LoRA. peft's ``register_peft_method`` only accepts names of its closed ``PeftType`` enum, so we fill
the same three tables it fills, with a plain-string type (which peft supports, huggingface/peft#2635).

Over 400 lines on purpose: peft's three registered parts (config, layer, tuner) and the functions
the trainer calls on them (evidence, balancing loss, router statistics) are one unit.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

AMOE_LORA = "AMOE_LORA"  # peft type, a plain string (see _register_with_peft)
PREFIX = "amoe_"  # every adapter parameter name starts with it
ALL = "__all__"  # router_usage's group of every token
EVIDENCE_EPS = 1e-4  # evidence is clamped to [eps, 1 - eps] before the logit: |shift| <= 9.2 s
MERGE_ERROR = (
    "AMoE-LoRA cannot be merged into the base weights: each token's mix of experts depends on the "
    "token and on the anomaly evidence, so there is no single weight delta to add. Export the base "
    "model together with the saved adapter (save_pretrained / PeftModel.from_pretrained) instead; "
    "unload() gives back the plain base model without the adapter."
)
_KEEP: Any = object()  # "leave this routing input as it is"


class AmoeLoraMergeError(NotImplementedError):
    """Raised by every merge path (merge_and_unload, merge_adapter, layer.merge)."""


@dataclass
class AmoeLoraConfig(PeftConfig):
    """AMoE-LoRA's settings; peft's own fields (target_modules, modules_to_save...) work as in LoRA."""

    r: int = 8  # rank of every expert
    lora_alpha: float = 16.0  # expert scaling: lora_alpha / r
    lora_dropout: float = 0.0  # dropout on the experts' input
    n_generalist: int = 2  # generalist experts per layer (expert indices 0 .. n_generalist - 1)
    n_anomaly: int = 2  # anomaly-aware experts per layer (the indices after the generalists)
    routing: str = "soft"  # "soft" (every expert, softmax gates) or "topk"
    top_k: int = 1  # experts per token with routing="topk"
    topk_renormalize: bool = False  # top-k gates sum to 1 (Mixtral); False: probabilities (Switch)
    evidence_scale_init: float = 1.0  # initial softplus(s), the weight of logit(evidence); > 0
    router_init_std: float = 0.02  # router weights ~ N(0, std)
    init_weights: bool = True  # B = 0 as in LoRA (the adapter starts as a no-op); False: random B
    target_modules: list[str] | str | None = None  # as in LoRA (None: peft's LoRA defaults)
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    modules_to_save: list[str] | None = None  # fully trained and saved, as in LoRA

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = AMOE_LORA
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.r <= 0 or self.n_generalist < 0 or self.n_anomaly < 0 or self.n_experts < 1:
            raise ValueError("AMoE-LoRA needs r > 0 and at least one expert")
        if self.routing not in ("soft", "topk"):
            raise ValueError(f"routing must be 'soft' or 'topk', not {self.routing!r}")
        if self.routing == "topk" and not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k must be in [1, {self.n_experts}], not {self.top_k}")
        if self.evidence_scale_init <= 0:
            raise ValueError("evidence_scale_init must be > 0 (it is a softplus output)")

    @property
    def n_experts(self) -> int:
        return self.n_generalist + self.n_anomaly


def expert_names(config: AmoeLoraConfig) -> list[str]:
    """The experts in the order of every per-expert tensor: generalists first."""
    return [f"generalist_{i}" for i in range(config.n_generalist)] + [
        f"anomaly_{i}" for i in range(config.n_anomaly)
    ]


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


class AmoeLoraModel(BaseTuner):
    """The tuner peft builds for an ``AmoeLoraConfig``: swaps target ``nn.Linear`` layers for
    ``AmoeLoraLinear``; default targets per architecture are LoRA's (peft's own table)."""

    prefix: str = PREFIX
    tuner_layer_cls = AmoeLoraLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(
        self, config, adapter_name, target, target_name, parent, current_key, **kwargs
    ) -> None:
        if isinstance(target, AmoeLoraLinear):
            target.update_layer(adapter_name, config)
            return
        new_module = AmoeLoraLinear(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter starts frozen
        self._replace_module(parent, target_name, new_module, target)

    def merge_and_unload(self, *args: Any, **kwargs: Any) -> nn.Module:
        raise AmoeLoraMergeError(MERGE_ERROR)

    def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise AmoeLoraMergeError(MERGE_ERROR)


# ---------------------------------------------------------------- the trainer's side


def amoe_layers(model: nn.Module) -> Iterator[tuple[str, AmoeLoraLinear]]:
    """(name, layer) of every AMoE-LoRA layer in a model (PeftModel or anything holding one)."""
    for name, module in model.named_modules():
        if isinstance(module, AmoeLoraLinear):
            yield name, module


def set_routing_inputs(
    model: nn.Module,
    *,
    evidence: torch.Tensor | float | Sequence[float] | None = _KEEP,
    groups: Sequence[str] | None = _KEEP,
    token_mask: torch.Tensor | None = _KEEP,
    record: bool = _KEEP,
) -> None:
    """Set the per-batch routing inputs on every AMoE layer until changed (arguments left out stay).

    evidence: one anomaly-evidence value in [0, 1] per sample (shape [B]; a scalar applies to all;
    detached: no gradient flows back to its source); None = no evidence (same as 0.5: the
    anomaly logits are not shifted). groups: one label per sample for router_usage (None: only
    the all-tokens group). token_mask: [B, T], 1 for tokens counted by the balancing loss and
    the statistics (e.g. the attention mask); None: all. record: whether forwards add to the
    router statistics (False e.g. for an auxiliary pass that reads no evidence)."""
    if evidence is not _KEEP and evidence is not None:
        evidence = torch.as_tensor(evidence, dtype=torch.float32).detach()
        if evidence.dim() > 1 or bool(((evidence < 0) | (evidence > 1)).any()):
            raise ValueError(
                "anomaly evidence must be a scalar or a [B] tensor of values in [0, 1]"
            )
    if groups is not _KEEP and groups is not None:
        groups = tuple(str(g) for g in groups)
    if token_mask is not _KEEP and token_mask is not None:
        token_mask = token_mask.detach()
    for _, layer in amoe_layers(model):
        if evidence is not _KEEP:
            layer.amoe_evidence = evidence
        if groups is not _KEEP:
            layer.amoe_groups = groups
        if token_mask is not _KEEP:
            layer.amoe_token_mask = token_mask
        if record is not _KEEP:
            layer.amoe_record = bool(record)


@contextlib.contextmanager
def routing_inputs(
    model: nn.Module,
    *,
    evidence: torch.Tensor | float | Sequence[float] | None = _KEEP,
    groups: Sequence[str] | None = _KEEP,
    token_mask: torch.Tensor | None = _KEEP,
    record: bool = _KEEP,
) -> Iterator[None]:
    """``set_routing_inputs`` for a block, restoring the previous inputs after it. With gradient
    checkpointing keep the block open over backward (the forward is recomputed there)."""
    saved = [
        (layer, layer.amoe_evidence, layer.amoe_groups, layer.amoe_token_mask, layer.amoe_record)
        for _, layer in amoe_layers(model)
    ]
    set_routing_inputs(
        model, evidence=evidence, groups=groups, token_mask=token_mask, record=record
    )
    try:
        yield
    finally:
        for layer, ev, grp, mask, rec in saved:
            layer.amoe_evidence, layer.amoe_groups, layer.amoe_token_mask = ev, grp, mask
            layer.amoe_record = rec


def anomaly_evidence(
    model: nn.Module, evidence: torch.Tensor | float | Sequence[float] | None
) -> contextlib.AbstractContextManager[None]:
    """Context manager: the batch's per-sample anomaly evidence ([B] in [0, 1]; None = neutral)."""
    return routing_inputs(model, evidence=evidence)


def _adapter_of(layer: AmoeLoraLinear, adapter_name: str | None) -> str:
    return adapter_name if adapter_name is not None else layer.active_adapters[0]


def balancing_loss(model: nn.Module, adapter_name: str | None = None) -> torch.Tensor:
    """Mean over AMoE layers of the Switch balancing loss of each layer's latest forward
    (1 at perfectly even use; differentiable w.r.t. the routers). Add ``coef *`` it to the loss."""
    losses = []
    for _, layer in amoe_layers(model):
        loss = layer.amoe_balance.get(_adapter_of(layer, adapter_name))
        if loss is not None:
            losses.append(loss)
    if not losses:
        raise RuntimeError("no AMoE-LoRA layer has run a forward yet: no balancing loss to read")
    device = losses[0].device
    loss = torch.stack([loss.to(device) for loss in losses]).mean()
    if torch.is_grad_enabled() and not loss.requires_grad and model.training:
        warnings.warn(  # e.g. reentrant gradient checkpointing runs the forward without autograd
            "the AMoE balancing loss carries no gradient: the forward ran without autograd "
            "(use non-reentrant gradient checkpointing, use_reentrant=False)",
            stacklevel=2,
        )
    return loss


def reset_router_stats(model: nn.Module) -> None:
    """Forget the router statistics of every AMoE layer (e.g. at the start of an epoch)."""
    for _, layer in amoe_layers(model):
        layer.amoe_stats.clear()


def _usage_row(g: torch.Tensor, t: torch.Tensor, w: float, n_layers: int = 1) -> dict[str, Any]:
    """One group's row: sums of gates g and top-1 counts t over w counted tokens (n_layers pooled)."""
    denom = max(w, 1e-12)
    return {
        "mean_gate": (g / denom).tolist(),
        "top1_share": (t / denom).tolist(),
        "tokens": round(w / n_layers),
    }


def router_usage(
    model: nn.Module, adapter_name: str | None = None, per_layer: bool = False
) -> dict[str, Any]:
    """Router statistics since the last reset, per group label (``"__all__"``: every token).

    ``{"experts": [names], "groups": {label: {"mean_gate": [E], "top1_share": [E], "tokens": n}}}``:
    mean_gate is an expert's mean gate per token, top1_share the share of tokens whose most
    probable expert it is, tokens the counted tokens per layer; layers are pooled (token-weighted).
    ``per_layer=True`` adds ``"layers": {layer name: {label: row}}``."""
    pooled: dict[str, list[Any]] = {}  # label -> [gate sum, top-1 sum, tokens, layers]
    layers: dict[str, dict[str, Any]] = {}
    names: list[str] = []
    for name, layer in amoe_layers(model):
        adapter = _adapter_of(layer, adapter_name)
        if adapter in layer.amoe_config:
            names = expert_names(layer.amoe_config[adapter])
        for label, stat in layer.amoe_stats.get(adapter, {}).items():
            g, t, w = (v.detach().cpu() for v in stat)
            if per_layer:
                layers.setdefault(name, {})[label] = _usage_row(g, t, w.item())
            acc = pooled.setdefault(label, [0.0, 0.0, 0.0, 0])
            acc[0], acc[1], acc[2], acc[3] = acc[0] + g, acc[1] + t, acc[2] + w.item(), acc[3] + 1
    groups = {label: _usage_row(g, t, w, n) for label, (g, t, w, n) in pooled.items()}
    out: dict[str, Any] = {"experts": names, "groups": groups}
    if per_layer:
        out["layers"] = layers
    return out


def _register_with_peft() -> None:
    """Fill peft's method tables as ``register_peft_method`` does (same uniqueness checks), with
    the plain-string type AMOE_LORA; re-importing this module (reload) replaces our own entry."""
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )

    ours = f"{AmoeLoraModel.__module__}.{AmoeLoraModel.__qualname__}"
    existing = PEFT_TYPE_TO_TUNER_MAPPING.get(AMOE_LORA)
    if existing is not None and f"{existing.__module__}.{existing.__qualname__}" != ours:
        raise KeyError(f"peft already has a method called {AMOE_LORA}: {existing}")
    for peft_type, prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        if prefix == PREFIX and peft_type != AMOE_LORA:
            raise KeyError(f"peft method {peft_type} already uses the prefix {PREFIX!r}")
    PEFT_TYPE_TO_PREFIX_MAPPING[AMOE_LORA] = PREFIX
    PEFT_TYPE_TO_CONFIG_MAPPING[AMOE_LORA] = AmoeLoraConfig
    PEFT_TYPE_TO_TUNER_MAPPING[AMOE_LORA] = AmoeLoraModel


_register_with_peft()
