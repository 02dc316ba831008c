"""Export: merge the LoRA adapter into the LLM for a standalone inference model."""

from __future__ import annotations

from typing import Any


def merge_adapter(checkpoint, weights: dict[str, Any]) -> tuple:
    """(model, tokenizer) with the LoRA adapter merged into the LLM weights (no peft left);
    the ``vmad_export`` dataset writes it as plain HF directories plus safetensors."""
    from vmad_pipeline.configs import WeightsConfig, from_dict
    from vmad_pipeline.models.checkpoint import merge_lora

    model, tokenizer = checkpoint.load(from_dict(WeightsConfig, weights, "weights"))
    return merge_lora(model), tokenizer
