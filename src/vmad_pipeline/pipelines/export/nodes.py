"""Export: a standalone inference model, the LoRA adapter merged into the LLM (an AMoE-LoRA
adapter cannot be merged and is exported beside the base LLM: ``models/checkpoint.py``)."""

from __future__ import annotations

from typing import Any


def merge_adapter(checkpoint, weights: dict[str, Any]) -> tuple:
    """(model, tokenizer) with the LoRA adapter merged into the LLM weights (no peft left; an
    AMoE-LoRA adapter stays); the ``vmad_export`` dataset writes it as plain HF directories plus
    safetensors (and the AMoE-LoRA adapter's peft directory)."""
    from vmad_pipeline.configs import WeightsConfig, from_dict
    from vmad_pipeline.models.checkpoint import merge_lora

    model, tokenizer = checkpoint.load(from_dict(WeightsConfig, weights, "weights"))
    return merge_lora(model), tokenizer
