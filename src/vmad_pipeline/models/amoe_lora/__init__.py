"""MAU-GPT's AMoE-LoRA (Anomaly-aware Mixture of Experts with LoRA) as a peft tuner.

The seed's part (``shared/seeds/003_...``, the MAU-GPT abstract): the LLM is adapted by LoRA
experts of two kinds, *anomaly-aware* and *generalist*, that collaborate adaptively. Nothing more;
the rest is ours (details and reasons in ``docs/amoe_lora.md``).

Laid out as peft lays out a tuner (``peft/tuners/lora/``):

- ``config.py``: ``AmoeLoraConfig(PeftConfig)``, the peft type ``AMOE_LORA`` and the prefix;
- ``layer.py``: ``AmoeLoraLinear(BaseTunerLayer)``, an ``nn.Linear`` with routed experts (the
  routing, the evidence shift, the balancing loss and the statistics of one layer);
- ``model.py``: ``AmoeLoraModel(BaseTuner)``, the injection, and the functions the trainer calls
  on a model holding AMoE layers (routing inputs, balancing loss, router statistics).

What a VMAD model feeds the routers (its evidence) is ``models/routing.py``, outside this package:
the tuner works on any model.

The tuner type ``"AMOE_LORA"`` is written into peft's registries when this package is imported
(below), so ``get_peft_model``, ``save_pretrained``, ``PeftModel.from_pretrained`` and
``print_trainable_parameters`` work as for LoRA. peft's ``register_peft_method`` only accepts
names of its closed ``PeftType`` enum, so we fill the same three tables it fills, with a
plain-string type (which peft supports, huggingface/peft#2635).
"""

from __future__ import annotations

from vmad_pipeline.models.amoe_lora.config import AMOE_LORA, PREFIX, AmoeLoraConfig, expert_names
from vmad_pipeline.models.amoe_lora.layer import (
    ALL,
    EVIDENCE_EPS,
    MERGE_ERROR,
    AmoeLoraLayer,
    AmoeLoraLinear,
    AmoeLoraMergeError,
)
from vmad_pipeline.models.amoe_lora.model import (
    AmoeLoraModel,
    amoe_layers,
    anomaly_evidence,
    balancing_loss,
    reset_router_stats,
    router_usage,
    routing_inputs,
    set_routing_inputs,
)

__all__ = [
    "ALL",
    "AMOE_LORA",
    "EVIDENCE_EPS",
    "MERGE_ERROR",
    "PREFIX",
    "AmoeLoraConfig",
    "AmoeLoraLayer",
    "AmoeLoraLinear",
    "AmoeLoraMergeError",
    "AmoeLoraModel",
    "amoe_layers",
    "anomaly_evidence",
    "balancing_loss",
    "expert_names",
    "reset_router_stats",
    "router_usage",
    "routing_inputs",
    "set_routing_inputs",
]


def _register_with_peft() -> None:
    """Fill peft's method tables as ``register_peft_method`` does (same uniqueness checks), with
    the plain-string type AMOE_LORA; re-importing this package (reload) replaces our own entry."""
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
