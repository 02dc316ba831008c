"""LLaMA-family language model (transformers) with its peft adapter: LoRA, or MAU-GPT's
AMoE-LoRA (``models/amoe_lora/``, registered with peft when this module is imported, so a saved
AMoE-LoRA adapter loads through ``PeftModel.from_pretrained`` like LoRA)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from vmad_pipeline.configs import LLMConfig, LoraConfig, ModelConfig
from vmad_pipeline.models.adapter_names import ADAPTER_PREFIXES, AMOE_LORA  # noqa: F401

if TYPE_CHECKING:  # peft is imported where an adapter is made or loaded: an export needs none
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel

    from vmad_pipeline.models.amoe_lora import AmoeLoraConfig
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
    from peft import LoraConfig as PeftLoraConfig

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


def activation_checkpointing(llm, on: bool) -> None:
    """Turn the LLM's activation checkpointing on (non-reentrant) or off. transformers 5 renames
    ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` (and deprecates the
    old name); older releases have only the old one."""
    action = "enable" if on else "disable"
    switch = getattr(llm, f"activation_checkpointing_{action}", None) or getattr(
        llm, f"gradient_checkpointing_{action}"
    )
    with quiet_peft():
        if on:
            switch({"use_reentrant": False})
        else:
            switch()


def peft_amoe_config(cfg: ModelConfig) -> AmoeLoraConfig:
    """AMoE-LoRA on LoRA's target modules with LoRA's dropout; the experts' own sizes from
    ``cfg.amoe``."""
    from vmad_pipeline.models.amoe_lora import AmoeLoraConfig

    amoe = cfg.amoe
    return AmoeLoraConfig(
        r=amoe.r,
        lora_alpha=amoe.alpha,
        lora_dropout=cfg.lora.dropout,
        n_generalist=amoe.n_generalist,
        n_anomaly=amoe.n_anomaly,
        routing=amoe.routing,
        top_k=amoe.top_k,
        target_modules=list(cfg.lora.target_modules),
        modules_to_save=list(FULLY_TRAINED_LLM_MODULES),
        task_type="CAUSAL_LM",
    )


def add_adapter(llm: PreTrainedModel, cfg: ModelConfig) -> PeftModel:
    """Wrap the LLM with the configured adapter (``cfg.adapter``) on ``cfg.lora.target_modules``;
    embeddings and head stay trainable."""
    from peft import get_peft_model

    config = peft_amoe_config(cfg) if cfg.adapter == "amoe_lora" else peft_lora_config(cfg.lora)
    with quiet_peft():
        return get_peft_model(llm, config)


def is_peft(llm) -> bool:
    """Whether ``llm`` is wrapped by peft (it carries an adapter), without importing peft."""
    return hasattr(llm, "peft_config")


def is_amoe(llm) -> bool:
    """Whether ``llm`` (a PeftModel or not) carries an AMoE-LoRA adapter."""
    config = getattr(llm, "peft_config", {}).get("default")
    return getattr(config, "peft_type", None) == AMOE_LORA
