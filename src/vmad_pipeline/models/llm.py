"""LLaMA-family language model (transformers) with LoRA adapters (peft)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from vmad_pipeline.configs import LLMConfig, LoraConfig

# Trained in full next to the LoRA matrices: the rows of added tokens ([SEG], <image>) live here.
FULLY_TRAINED_LLM_MODULES = ["embed_tokens", "lm_head"]


def build_tiny_llm(
    cfg: LLMConfig, *, vocab_size: int, pad_token_id: int, bos_token_id: int, eos_token_id: int
) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=False,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    return LlamaForCausalLM(config)


def peft_lora_config(cfg: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        modules_to_save=list(FULLY_TRAINED_LLM_MODULES),
        bias="none",
        task_type="CAUSAL_LM",
    )


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates in favour
    of ``is_activation_checkpointing``: a FutureWarning of theirs on every wrap, save and load,
    about nothing we call. Silenced here, by message, where peft is called."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def add_lora(llm: PreTrainedModel, cfg: LoraConfig) -> PeftModel:
    """Wrap the LLM with LoRA on ``cfg.target_modules``; embeddings and head stay trainable."""
    with quiet_peft():
        return get_peft_model(llm, peft_lora_config(cfg))
