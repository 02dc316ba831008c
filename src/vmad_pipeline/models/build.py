"""Build VMAD from a ``ModelConfig``; the only place that saves and loads checkpoints.

Checkpoint directory layout::

    config.json                  model config (ModelConfig as a dict) + format version
    tokenizer/                   HF tokenizer files
    llm_base/                    tiny preset only: the random-initialised base LLM (HF format)
    adapter/                     PEFT's own format: adapter_config.json, adapter_model.safetensors
    weights.safetensors          the weights outside the LLM: all of them for the tiny preset;
                                 for the real preset only the trained ones and the buffers (DSSL's
                                 memory queues), the frozen CLIP and SAM encoder being reloaded
                                 from the local files named in config.json's ``weights``

An export (``export_model``) is a standalone merged copy for inference, without peft.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from segment_anything.modeling import Sam
from transformers import (
    AutoTokenizer,
    CLIPVisionModel,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from vmad_pipeline.configs import ConfigError, ModelConfig, WeightsConfig, from_dict, to_dict
from vmad_pipeline.io.atomic import atomic_directory
from vmad_pipeline.models.dssl import Dssl
from vmad_pipeline.models.llm import add_lora, build_tiny_llm
from vmad_pipeline.models.pretrained import load_llava, load_sam
from vmad_pipeline.models.projectors import MlpProjector, build_projector
from vmad_pipeline.models.sam import build_sam
from vmad_pipeline.models.vision import VisionTower, build_vision_tower
from vmad_pipeline.models.vmad import SegHead, VmadModel
from vmad_pipeline.training.prompts import IMAGE_TOKEN, SEG_TOKEN, STATE_PHRASES

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: LTC, DSSL (queues), real preset, weights paths


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
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


@dataclass
class Backbone:
    """The pre-built pieces of a preset: random-initialised (tiny) or loaded from local files."""

    cfg: ModelConfig  # with the sizes the pieces really have
    vision: VisionTower
    llm: PreTrainedModel  # the base LLM, before LoRA
    sam: Sam
    projector_state: dict[str, torch.Tensor] | None = None  # LLaVA's pretrained mlp projector


def _tiny_backbone(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype, llm=None
) -> Backbone:
    if llm is None:
        llm = build_tiny_llm(
            cfg.llm,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return Backbone(
        cfg=cfg, vision=build_vision_tower(cfg.vision), llm=llm.to(dtype), sam=build_sam(cfg.sam)
    )


def _llava_sam_backbone(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype, llm=None
) -> Backbone:
    """LLaVA-1.5 (CLIP tower, LLaMA, its mlp projector) + SAM from ``cfg.weights``."""
    parts = load_llava(cfg.weights.llava_dir, dtype=dtype)
    if parts.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"weights.llava_dir: the tokenizer given ({len(tokenizer)} tokens) is not the one of "
            f"{cfg.weights.llava_dir} plus [SEG] ({len(parts.tokenizer)} tokens)"
        )
    cfg = dataclasses.replace(cfg, vision=parts.vision_config, llm=parts.llm_config)
    return Backbone(
        cfg=cfg,
        vision=VisionTower(clip=parts.vision, select_layer=parts.vision_feature_layer),
        llm=parts.llm,
        sam=load_sam(cfg.sam, cfg.weights.sam_checkpoint).to(dtype),
        projector_state=parts.projector_state,
    )


# preset -> how its backbone is made (configs.PRESETS)
BACKBONES = {"tiny": _tiny_backbone, "llava7b_sam_h": _llava_sam_backbone}


def _assemble(bb: Backbone, tokenizer: PreTrainedTokenizerBase, llm) -> VmadModel:
    cfg = bb.cfg
    projector = build_projector(
        cfg.projector,
        in_dim=cfg.vision.hidden_size,
        out_dim=cfg.llm.hidden_size,
        grid=cfg.vision.grid,
    )
    if bb.projector_state is not None and isinstance(projector, MlpProjector):
        # LLaVA's multi_modal_projector is the same Linear-GELU-Linear: start from it.
        projector.mlp.load_state_dict(
            {
                k.replace("linear_1.", "0.").replace("linear_2.", "2."): v
                for k, v in bb.projector_state.items()
            }
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
        vision=bb.vision,
        projector=projector,
        llm=llm,
        sam=bb.sam,
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
    tokenizer: PreTrainedTokenizerBase,
    *,
    seed: int = 0,
    train_classes: Sequence[str] = (),
    dtype: torch.dtype = torch.float32,
) -> VmadModel:
    """A fresh model for training: the preset's backbone (random for ``tiny``, local
    checkpoints named in ``cfg.weights`` for ``llava7b_sam_h``) with new LoRA adapters,
    projector, [SEG] head and DSSL. ``train_classes`` become DSSL's memory-queue rows."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(
        cfg,
        vocab_size=len(tokenizer),
        dssl=dataclasses.replace(cfg.dssl, classes=tuple(sorted(train_classes))),
    )
    bb = BACKBONES[cfg.preset](cfg, tokenizer, dtype)
    return _assemble(bb, tokenizer, add_lora(bb.llm, bb.cfg.lora))


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


def save_checkpoint(model: VmadModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """Write the checkpoint directory atomically (all or nothing)."""
    with atomic_directory(path) as tmp:
        _write_config(tmp, model.config)
        tokenizer.save_pretrained(tmp / "tokenizer")
        if model.config.preset == "tiny":
            model.llm.get_base_model().save_pretrained(
                tmp / "llm_base", state_dict=_base_llm_state(model.llm)
            )
        model.llm.save_pretrained(tmp / "adapter")
        save_file(_non_llm_state(model), tmp / "weights.safetensors")


def _write_config(directory: Path, cfg: ModelConfig, **extra) -> None:
    meta = {"format_version": FORMAT_VERSION, "model": to_dict(cfg), **extra}
    (directory / "config.json").write_text(json.dumps(meta, indent=2))


def read_model_config(path: str | Path) -> ModelConfig:
    meta = json.loads((Path(path) / "config.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{path}: checkpoint format {meta.get('format_version')} is not {FORMAT_VERSION}; "
            "retrain with `kedro run --pipeline train`"
        )
    return from_dict(ModelConfig, meta["model"], "model")


def _check_dir(path: Path, what: str, pipeline: str) -> None:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no VMAD {what} at {path} (config.json missing); make one with "
            f"`kedro run --pipeline {pipeline}`"
        )


def _load_parts(model: VmadModel, state: dict[str, torch.Tensor], *, strict: bool) -> None:
    for name, part in model.parts().items():
        if name == "llm":
            continue  # the LLM comes from its own HF / PEFT directories
        prefix = f"{name}."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if sub or strict:
            part.load_state_dict(sub, strict=strict)


def load_checkpoint(
    path: str | Path, *, weights: WeightsConfig | None = None, dtype: torch.dtype = torch.float32
) -> tuple[VmadModel, PreTrainedTokenizerBase]:
    """Rebuild the trained model (eval mode) and its tokenizer from a checkpoint directory.

    The real preset rebuilds its frozen backbone from the local weight files recorded in the
    checkpoint, or from ``weights`` when they have moved.
    """
    path = Path(path)
    _check_dir(path, "checkpoint", "train")
    cfg = read_model_config(path)
    if weights is not None:
        cfg = dataclasses.replace(cfg, weights=weights)
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    base = LlamaForCausalLM.from_pretrained(path / "llm_base") if cfg.preset == "tiny" else None
    bb = BACKBONES[cfg.preset](cfg, tokenizer, dtype, base)
    llm = PeftModel.from_pretrained(bb.llm, path / "adapter")
    model = _assemble(bb, tokenizer, llm)
    _load_parts(model, load_file(path / "weights.safetensors"), strict=cfg.preset == "tiny")
    return model.eval(), tokenizer


# --------------------------------------------------------------------------- export

EXPORT_PARTS = ("projector", "sam_encoder", "sam_decoder", "seg_head")  # weights.safetensors


def merge_lora(model: VmadModel) -> VmadModel:
    """Merge the LoRA adapter (and the trained embeddings / head) into the LLM, in place."""
    if isinstance(model.llm, PeftModel):
        model.llm = model.llm.merge_and_unload()
    return model


def export_model(model: VmadModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """Merge the LoRA adapter into the LLM and write a standalone inference directory::

        config.json   tokenizer/   llm/ (HF LlamaForCausalLM, merged)   vision/ (HF CLIPVisionModel)
        weights.safetensors        projector, SAM (encoder, prompt encoder, decoder), [SEG] head

    Reloadable with :func:`load_exported` without peft and without the original weight files.
    ``model.llm`` is replaced by the merged LLM (the PEFT wrapper is unloaded in place).
    DSSL is training-only and is not exported.
    """
    merge_lora(model)
    cfg = dataclasses.replace(
        model.config, dssl=dataclasses.replace(model.config.dssl, enabled=False)
    )
    parts = model.parts()
    state = {
        f"{name}.{k}": v.detach().contiguous().cpu()
        for name in EXPORT_PARTS
        for k, v in parts[name].state_dict().items()
    }
    with atomic_directory(path) as tmp:
        _write_config(tmp, cfg, export=True)
        tokenizer.save_pretrained(tmp / "tokenizer")
        model.llm.save_pretrained(tmp / "llm")
        model.vision.clip.save_pretrained(tmp / "vision")
        save_file(state, tmp / "weights.safetensors")


def load_exported(
    path: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[VmadModel, PreTrainedTokenizerBase]:
    """The exported model (eval mode) from plain HF directories and safetensors: no peft."""
    path = Path(path)
    _check_dir(path, "export", "export")
    cfg = read_model_config(path)
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    bb = Backbone(
        cfg=cfg,
        vision=VisionTower(
            clip=CLIPVisionModel.from_pretrained(path / "vision", dtype=dtype),
            select_layer=cfg.vision.select_layer,
        ),
        llm=LlamaForCausalLM.from_pretrained(path / "llm", dtype=dtype),
        sam=build_sam(cfg.sam).to(dtype),
    )
    model = _assemble(bb, tokenizer, bb.llm)
    _load_parts(model, load_file(path / "weights.safetensors"), strict=False)
    return model.eval(), tokenizer
