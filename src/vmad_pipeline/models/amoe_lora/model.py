"""The AMoE-LoRA tuner peft builds for an ``AmoeLoraConfig`` (injection: target ``nn.Linear``
layers become ``AmoeLoraLinear``), and the functions the trainer calls on any model holding such
layers (a ``PeftModel`` or a ``VmadModel``): the per-batch routing inputs (evidence, group labels,
token mask), the balancing loss and the router statistics (docs/amoe_lora.md)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from vmad_pipeline.models.amoe_lora.config import PREFIX, expert_names
from vmad_pipeline.models.amoe_lora.layer import (
    MERGE_ERROR,
    AmoeLoraLayer,
    AmoeLoraLinear,
    AmoeLoraMergeError,
)

_KEEP: Any = object()  # "leave this routing input as it is"


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
