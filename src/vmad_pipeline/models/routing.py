"""What a VMAD model's AMoE-LoRA routers read (docs/amoe_lora.md): functions of a ``VmadModel``,
called by its forward and predict; no-ops for a plain LoRA adapter. Outside the tuner package
``models/amoe_lora/``, which works on any model: these read VMAD's config, expert and region
tokens (``needs_own_mask`` serves the region tokens' own-mask source too).

The seed (MAU-GPT) says only that anomaly-aware experts exist; which evidence conditions them is
ours: the evidence must exist *before* the LLM runs, because every layer routes every token.

* ``expert``: the anomaly expert's image score (Anomaly-OV's, frozen from stage 1): free, it is
  computed for the expert's tokens anyway.
* ``own_mask``: the peak of the mask the model itself draws at a [SEG] in a no-gradient pre-pass
  with neutral evidence (its image score before the answer is written). One more LLM pass and
  SAM decode per batch; shared with the region tokens' ``own_mask`` source when both are on.
* ``none``: neutral evidence (0.5): the anomaly experts are routed to on token content alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel

from vmad_pipeline.configs import ModelConfig
from vmad_pipeline.models.llm import is_amoe
from vmad_pipeline.models.region_tokens import RegionTokens


@runtime_checkable
class RoutedModel(Protocol):
    """What the functions here read of a model, public names only (``VmadModel`` is one)."""

    config: ModelConfig  # routing_evidence, region_tokens.source
    llm: PreTrainedModel  # a PeftModel when it carries an adapter
    region: RegionTokens | None


def evidence_source(model: RoutedModel) -> str | None:
    """ "expert", "own_mask", "none", or None when the model has no AMoE-LoRA adapter."""
    if not is_amoe(model.llm):
        return None
    return model.config.routing_evidence


def needs_own_mask(model: RoutedModel, *, region_given: bool = False) -> bool:
    """Whether a pass must first draw the model's own mask: for the region tokens' ``own_mask``
    source (unless the regions are given) or for AMoE-LoRA's ``own_mask`` evidence."""
    region = model.region is not None and model.config.region_tokens.source == "own_mask"
    return (region and not region_given) or evidence_source(model) == "own_mask"


def routing_evidence(model: RoutedModel, expert, own: torch.Tensor | None) -> torch.Tensor | None:
    """B evidence values in [0, 1] for the routers (None: neutral or no AMoE): the expert's
    score or the own mask's peak (``own``: B x H x W probabilities), detached."""
    source = evidence_source(model)
    if source == "expert" and expert is not None:
        return expert.score.detach().float().clamp(0, 1)
    if source == "own_mask" and own is not None:
        return own.detach().float().flatten(1).amax(1).clamp(0, 1)
    return None


@contextlib.contextmanager
def routed(
    model: RoutedModel,
    evidence: torch.Tensor | None,
    *,
    groups: Sequence[str] | None = None,
    token_mask: torch.Tensor | None = None,
    record: bool | None = None,
) -> Iterator[None]:
    """The LLM calls inside read ``evidence`` (B, or None: neutral); ``groups`` label the samples
    in the router statistics, ``token_mask`` (B x T) says which tokens count; ``record=False``
    keeps an auxiliary pass out of the statistics (None: as the caller set it). A plain LoRA
    model: nothing happens."""
    if evidence_source(model) is None:
        yield
        return
    from vmad_pipeline.models.amoe_lora import routing_inputs  # peft: AMoE-LoRA models only

    keep = {} if record is None else {"record": record}
    with routing_inputs(model.llm, evidence=evidence, groups=groups, token_mask=token_mask, **keep):
        yield


def balance(model: RoutedModel) -> torch.Tensor | None:
    """The Switch balancing loss of the LLM's latest forward (None without AMoE-LoRA)."""
    if evidence_source(model) is None:
        return None
    from vmad_pipeline.models.amoe_lora import balancing_loss  # peft: AMoE-LoRA models only

    return balancing_loss(model.llm)
