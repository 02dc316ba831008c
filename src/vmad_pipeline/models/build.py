"""Build VMAD from a ``ModelConfig``; the only place that saves and loads checkpoints.

Checkpoint directory layout::

    config.json                  model config (ModelConfig as a dict) + format version
    tokenizer/                   HF tokenizer files
    llm_base/                    tiny preset only: the random-initialised base LLM (HF format)
    adapter/                     PEFT's own format: adapter_config.json, adapter_model.safetensors
    weights.safetensors          the other trained weights (vision, projector, SAM, [SEG] head)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from vmad_pipeline.configs import ConfigError, ModelConfig, from_dict, to_dict
from vmad_pipeline.io.atomic import atomic_directory
from vmad_pipeline.models.dssl import Dssl
from vmad_pipeline.models.llm import add_lora, build_tiny_llm
from vmad_pipeline.models.projectors import build_projector
from vmad_pipeline.models.sam import build_sam
from vmad_pipeline.models.vision import build_vision_tower
from vmad_pipeline.models.vmad import SegHead, VmadModel
from vmad_pipeline.training.prompts import IMAGE_TOKEN, SEG_TOKEN, STATE_PHRASES

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "seg_token_id": tokenizer.convert_tokens_to_ids(SEG_TOKEN),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    missing = [k for k, v in ids.items() if v is None or v == tokenizer.unk_token_id]
    if missing:
        raise ConfigError(f"tokenizer lacks the special tokens for {missing}")
    return ids


def _assemble(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast, llm) -> VmadModel:
    vision = build_vision_tower(cfg.vision)
    projector = build_projector(
        cfg.projector,
        in_dim=cfg.vision.hidden_size,
        out_dim=cfg.llm.hidden_size,
        grid=cfg.vision.grid,
    )
    n_hidden = cfg.vision.num_layers + 1  # CLIP hidden states: embeddings + every layer
    bad = [i for i in projector.level_indices if not -n_hidden <= i < n_hidden]
    if bad:
        raise ConfigError(
            f"train.model.projector.ltc.levels: {bad} out of range; the vision tower has "
            f"{n_hidden} hidden states (0 = embeddings .. {n_hidden - 1} = last layer)"
        )
    dssl = None
    if cfg.dssl.enabled:
        dssl = Dssl(
            cfg=cfg.dssl,
            d_sam=cfg.sam.prompt_dim,
            d_llm=cfg.llm.hidden_size,
            d_clip=cfg.vision.hidden_size,
        )
    model = VmadModel(
        config=cfg,
        vision=vision,
        projector=projector,
        llm=llm,
        sam=build_sam(cfg.sam),
        seg_head=SegHead(d_llm=cfg.llm.hidden_size, d_sam=cfg.sam.prompt_dim),
        dssl=dssl,
        state_phrase_ids=tuple(
            tokenizer.encode(p, add_special_tokens=False) for p in STATE_PHRASES
        ),
        **_token_ids(tokenizer),
    )
    apply_freezing(model)
    return model


def apply_freezing(model: VmadModel) -> None:
    """Freeze the preset's frozen parts; the LLM trains only through LoRA + embeddings/head."""
    for name, part in model.parts().items():
        if name == "llm":
            continue  # peft already set requires_grad: LoRA and modules_to_save only
        for p in part.parameters():
            p.requires_grad_(name not in model.config.frozen)
    if "llm" in model.config.frozen:
        for p in model.llm.parameters():
            p.requires_grad_(False)


def build_vmad(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerFast,
    *,
    seed: int = 0,
    train_classes: Sequence[str] = (),
) -> VmadModel:
    """A fresh model for training (tiny: everything random-initialised from ``seed``).

    ``train_classes`` become DSSL's memory-queue rows (saved in the config).
    """
    if cfg.preset != "tiny":
        raise ConfigError(
            f"train.model.preset: {cfg.preset!r} loads local checkpoints; that preset arrives with "
            "the real-weights loader (issue: VMAD proper). Use preset 'tiny'."
        )
    torch.manual_seed(seed)
    cfg = dataclasses.replace(
        cfg,
        vocab_size=len(tokenizer),
        dssl=dataclasses.replace(cfg.dssl, classes=tuple(sorted(train_classes))),
    )
    llm = build_tiny_llm(
        cfg.llm,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _assemble(cfg, tokenizer, add_lora(llm, cfg.lora))


def _non_llm_state(model: VmadModel) -> dict[str, torch.Tensor]:
    """Weights outside the LLM: all of them for random-initialised presets (nothing to reload
    them from), else only the trainable ones."""
    everything = model.config.preset == "tiny"
    state = {}
    for name, part in model.parts().items():
        if name == "llm":
            continue
        # Buffers too: DSSL's memory queues must come back with the checkpoint.
        keep = (
            None
            if everything
            else {n for n, p in part.named_parameters() if p.requires_grad}
            | {n for n, _ in part.named_buffers()}
        )
        for key, value in part.state_dict().items():
            if keep is None or key in keep:
                state[f"{name}.{key}"] = value.detach().contiguous().cpu()
    return state


def _base_llm_state(llm: PeftModel) -> dict[str, torch.Tensor]:
    """The base LLM's own weights, without the LoRA / modules_to_save wrappers peft injects."""
    state = {}
    for key, value in llm.get_base_model().state_dict().items():
        if "lora_" in key or ".modules_to_save." in key:
            continue
        state[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = value
    return state


def save_checkpoint(model: VmadModel, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Write the checkpoint directory atomically (all or nothing)."""
    with atomic_directory(path) as tmp:
        (tmp / "config.json").write_text(
            json.dumps({"format_version": FORMAT_VERSION, "model": to_dict(model.config)}, indent=2)
        )
        tokenizer.save_pretrained(tmp / "tokenizer")
        if model.config.preset == "tiny":
            model.llm.get_base_model().save_pretrained(
                tmp / "llm_base", state_dict=_base_llm_state(model.llm)
            )
        model.llm.save_pretrained(tmp / "adapter")
        save_file(_non_llm_state(model), tmp / "weights.safetensors")


def read_model_config(path: str | Path) -> ModelConfig:
    meta = json.loads((Path(path) / "config.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{path}: checkpoint format {meta.get('format_version')} is not {FORMAT_VERSION}"
        )
    return from_dict(ModelConfig, meta["model"], "model")


def load_checkpoint(path: str | Path) -> tuple[VmadModel, PreTrainedTokenizerFast]:
    """Rebuild the trained model (eval mode) and its tokenizer from a checkpoint directory."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no VMAD checkpoint at {path} (config.json missing); train one with `kedro run --pipeline train`"
        )
    cfg = read_model_config(path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path / "tokenizer")
    if cfg.preset != "tiny":
        raise ConfigError(f"{path}: preset {cfg.preset!r} checkpoints are not loadable yet")
    base = LlamaForCausalLM.from_pretrained(path / "llm_base")
    llm = PeftModel.from_pretrained(base, path / "adapter")
    model = _assemble(cfg, tokenizer, llm)
    state = load_file(path / "weights.safetensors")
    for name, part in model.parts().items():
        if name == "llm":
            continue
        prefix = f"{name}."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        part.load_state_dict(sub, strict=cfg.preset == "tiny")
    return model.eval(), tokenizer
