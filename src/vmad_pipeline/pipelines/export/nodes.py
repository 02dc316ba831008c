"""Export: merge the LoRA adapter into the LLM for a standalone inference model."""

from __future__ import annotations


def merge_adapter(trained: tuple) -> tuple:
    """(model, tokenizer) with the LoRA adapter merged into the LLM weights (no peft left);
    the ``vmad_export`` dataset writes it as plain HF directories plus safetensors."""
    from vmad_pipeline.models.build import merge_lora

    model, tokenizer = trained
    return merge_lora(model), tokenizer
