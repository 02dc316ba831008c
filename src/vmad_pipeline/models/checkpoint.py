"""Save and load VMAD: the training checkpoint and the merged export.

Checkpoint directory layout::

    config.json                  format version, the model config (ModelConfig without machine
                                 paths) and, for presets built on local weight files, their
                                 names and fingerprints (``weights_files``)
    tokenizer/                   HF tokenizer files
    llm_base/                    tiny preset only: the random-initialised base LLM (HF format)
    adapter/                     PEFT's own format: adapter_config.json, adapter_model.safetensors
    weights.safetensors          the weights outside the LLM: all of them for the tiny preset;
                                 for the real preset only the trained ones and the buffers (DSSL's
                                 memory queues), the frozen CLIP and SAM encoder being reloaded
                                 from the local files the caller names (``weights``, from
                                 conf/local), checked against the recorded fingerprints

An export (``export_model``) is a standalone copy for inference: a LoRA adapter merged into the
LLM (no peft needed); an AMoE-LoRA adapter cannot be merged (each token's mix of experts depends
on the token and the anomaly evidence), so its export keeps the base LLM and the adapter apart.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    CLIPVisionModel,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from vmad_pipeline.atomic import atomic_directory
from vmad_pipeline.configs import ConfigError, ModelConfig, WeightsConfig, from_dict, to_dict
from vmad_pipeline.models.build import (
    BACKBONES,
    FROM_WEIGHT_FILES,
    RANDOM_LLM,
    Backbone,
    assemble,
)
from vmad_pipeline.models.llm import ADAPTER_PREFIXES, is_amoe, is_peft, quiet_peft
from vmad_pipeline.models.pretrained import weights_fingerprint
from vmad_pipeline.models.sam import build_sam
from vmad_pipeline.models.strict import check_adapter, from_pretrained_strict, load_parts
from vmad_pipeline.models.vision import VisionTower
from vmad_pipeline.models.vmad import VmadModel

# Parts saved whole even where frozen: no weight file holds them (the anomaly expert is frozen
# in stage 2 after being trained here in stage 1).
ALWAYS_SAVED = ("expert", "region")
FORMAT_VERSION = 3  # 3: no machine paths in config.json, weight files fingerprinted


def _state(
    model: VmadModel, names: tuple[str, ...], *, trained_only: bool, keys_only: bool = False
) -> dict[str, torch.Tensor]:
    """The state of the named parts, as ``<part>.<key>``, without the always-frozen backbones
    installed with a package (rebuilt from it); ``trained_only``: only trainable weights and the
    buffers (DSSL's memory queues must come back). ``keys_only``: no tensor is copied."""
    parts = model.parts()
    state = {}
    for name in names:
        part = parts[name]
        fixed = {n for n, m in part.named_modules() if getattr(m, "always_frozen", False)}
        trained = {n for n, p in part.named_parameters() if p.requires_grad}
        buffers = {n for n, _ in part.named_buffers()}
        for key, value in part.state_dict().items():
            if any(key == f or key.startswith(f + ".") for f in fixed):
                continue
            if trained_only and key not in trained | buffers:
                continue
            state[f"{name}.{key}"] = None if keys_only else value.detach().contiguous().cpu()
    return state


def _non_llm_state(model: VmadModel, *, keys_only: bool = False) -> dict[str, torch.Tensor]:
    """Weights outside the LLM: all of them (nothing to reload them from), but for presets
    that rebuild frozen parts from local weight files (only the trained ones, and buffers)."""
    names = tuple(n for n in model.parts() if n not in ("llm", *ALWAYS_SAVED))
    trained_only = model.config.preset in FROM_WEIGHT_FILES
    state = _state(model, names, trained_only=trained_only, keys_only=keys_only)
    saved = tuple(n for n in ALWAYS_SAVED if n in model.parts())
    return {**state, **_state(model, saved, trained_only=False, keys_only=keys_only)}


def _base_llm_state(llm) -> dict[str, torch.Tensor]:
    """The base LLM's own weights, without the adapter / modules_to_save wrappers peft injects."""
    state = {}
    for key, value in llm.get_base_model().state_dict().items():
        if any(p in key for p in ADAPTER_PREFIXES) or ".modules_to_save." in key:
            continue
        state[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = value
    return state


def save_checkpoint(model: VmadModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """Write the checkpoint directory atomically (all or nothing)."""
    with atomic_directory(path) as tmp:
        _write_config(tmp, model, model.config)
        tokenizer.save_pretrained(tmp / "tokenizer")
        if model.config.preset in RANDOM_LLM:
            model.llm.get_base_model().save_pretrained(
                tmp / "llm_base", state_dict=_base_llm_state(model.llm)
            )
        _save_adapter(model.llm, tmp / "adapter")
        save_file(_non_llm_state(model), tmp / "weights.safetensors")


def _save_adapter(llm, directory: Path) -> None:
    with quiet_peft():
        llm.save_pretrained(directory)


def _load_adapter(llm, directory: Path):
    """The peft adapter saved in ``directory`` on ``llm``, strictly (every weight present)."""
    with quiet_peft():
        from peft import PeftModel

        import vmad_pipeline.models.amoe_lora  # noqa: F401 (registers AMoE-LoRA with peft)

        wrapped = PeftModel.from_pretrained(llm, directory)
    check_adapter(wrapped, directory)
    return wrapped


def _write_config(directory: Path, model: VmadModel, cfg: ModelConfig, **extra) -> None:
    """config.json: the model config without the machine's paths (``weights``), the names and
    fingerprints of the local weight files the preset was built on, and what the model was
    trained on (``trained_on``: classes, sources, split hash)."""
    config = to_dict(cfg)
    del config["weights"]
    meta = {
        "format_version": FORMAT_VERSION,
        "model": config,
        "weights_files": weights_fingerprint(cfg) if cfg.preset in FROM_WEIGHT_FILES else {},
        "trained_on": model.trained_on,
        "decision": getattr(model, "decision", {}),
        "type_head": getattr(model, "type_head", None),
        **extra,
    }
    (directory / "config.json").write_text(json.dumps(meta, indent=2))


def _set_meta(model, meta: dict) -> None:
    """What is stored with the weights: the training data, the thresholds, the type head."""
    model.trained_on, model.decision = meta.get("trained_on", {}), meta.get("decision", {})
    model.type_head = meta.get("type_head")


def _read_meta(path: str | Path) -> dict:
    meta = json.loads((Path(path) / "config.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{path}: checkpoint format {meta.get('format_version')} is not {FORMAT_VERSION}; "
            "retrain with `kedro run --pipeline train`"
        )
    return meta


def read_model_config(path: str | Path) -> ModelConfig:
    """The model config of a checkpoint or export (its ``weights`` are unset: machine paths are
    not stored)."""
    return from_dict(ModelConfig, _read_meta(path)["model"], "model")


def _with_weights(path: Path, cfg: ModelConfig, weights: WeightsConfig | None) -> ModelConfig:
    """``cfg`` with this machine's weight paths; for a preset built on local files, they must be
    given and must hold the files the checkpoint was trained on (same fingerprints)."""
    if cfg.preset not in FROM_WEIGHT_FILES:
        return cfg
    if weights is None:
        raise ConfigError(
            f"{path}: the {cfg.preset} preset rebuilds its frozen backbone from local weight "
            "files; pass them (weights.llava_dir, weights.sam_checkpoint in "
            "conf/local/parameters_weights.yml)"
        )
    cfg = dataclasses.replace(cfg, weights=weights)
    recorded = _read_meta(path).get("weights_files", {})
    found = weights_fingerprint(cfg)
    for key, want in recorded.items():
        if key in found and found[key] != want:  # a missing file is named by its loader
            raise ConfigError(
                f"weights.{key}: {getattr(weights, key)} is not the file the checkpoint {path} "
                f"was trained on (recorded {want}, found {found.get(key)})"
            )
    return cfg


def _check_dir(path: Path, what: str, pipeline: str) -> None:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no VMAD {what} at {path} (config.json missing); make one with "
            f"`kedro run --pipeline {pipeline}`"
        )


FROZEN_RULE = (
    "the frozen parts of a pretrained preset ({}) load from the base weight files, and only "
    "trained weights and buffers are saved"
)


def _load_parts(model: VmadModel, path: Path) -> None:
    """weights.safetensors, strictly: it must hold exactly what :func:`_non_llm_state` saves
    for this model (all of it for ``tiny``; trained weights and buffers otherwise)."""
    parts = {n: p for n, p in model.parts().items() if n != "llm"}  # the LLM has its own dirs
    frozen = ", ".join(model.config.frozen) or "none"
    rule = FROZEN_RULE.format(frozen) if model.config.preset in FROM_WEIGHT_FILES else ""
    expected = set(_non_llm_state(model, keys_only=True))
    load_parts(parts, path / "weights.safetensors", expected, rule)


def load_checkpoint(
    path: str | Path, *, weights: WeightsConfig | None = None, dtype: torch.dtype = torch.float32
) -> tuple[VmadModel, PreTrainedTokenizerBase]:
    """Rebuild the trained model (eval mode) and its tokenizer from a checkpoint directory.

    The real preset rebuilds its frozen backbone from the local weight files named by
    ``weights`` (this machine's paths), which must be the files it was trained on.
    """
    path = Path(path)
    _check_dir(path, "checkpoint", "train")
    cfg = _with_weights(path, read_model_config(path), weights)
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    base = None
    if cfg.preset in RANDOM_LLM:
        base = from_pretrained_strict(LlamaForCausalLM, path / "llm_base")
    bb = BACKBONES[cfg.preset](cfg, tokenizer, dtype, base)
    model = assemble(bb, tokenizer, _load_adapter(bb.llm, path / "adapter"))
    _load_parts(model, path)
    _set_meta(model, _read_meta(path))
    return model.eval(), tokenizer


# --------------------------------------------------------------------------- export

EXPORT_PARTS = ("projector", "sam_encoder", "sam_decoder", "seg_head")  # weights.safetensors


def merge_lora(model: VmadModel) -> VmadModel:
    """Merge the LoRA adapter (and the trained embeddings / head) into the LLM, in place. An
    AMoE-LoRA adapter stays as it is: it has no single weight delta (``amoe_lora.MERGE_ERROR``)."""
    if is_peft(model.llm) and not is_amoe(model.llm):
        with quiet_peft():
            model.llm = model.llm.merge_and_unload()
    return model


def export_model(model: VmadModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """Merge the LoRA adapter into the LLM and write a standalone inference directory::

        config.json   tokenizer/   llm/ (HF LlamaForCausalLM, merged)   vision/ (HF CLIPVisionModel)
        weights.safetensors        projector, SAM (encoder, prompt encoder, decoder), [SEG] head
        adapter/      AMoE-LoRA only: peft's adapter directory; llm/ is then the base LLM unmerged

    Reloadable with :func:`load_exported` without the original weight files (and, for LoRA,
    without peft). ``model.llm`` is replaced by the merged LLM (the PEFT wrapper is unloaded in
    place). DSSL is training-only and is not exported.
    """
    merge_lora(model)
    keep_adapter = is_peft(model.llm)  # AMoE-LoRA: not mergeable
    cfg = dataclasses.replace(
        model.config, dssl=dataclasses.replace(model.config.dssl, enabled=False)
    )
    clip = isinstance(model.vision, VisionTower)
    names = EXPORT_PARTS if clip else ("vision", *EXPORT_PARTS)
    state = _state(model, names, trained_only=False)
    with atomic_directory(path) as tmp:
        _write_config(tmp, model, cfg, export=True)
        tokenizer.save_pretrained(tmp / "tokenizer")
        if keep_adapter:
            base = model.llm.get_base_model()
            base.save_pretrained(tmp / "llm", state_dict=_base_llm_state(model.llm))
            _save_adapter(model.llm, tmp / "adapter")
        else:
            model.llm.save_pretrained(tmp / "llm")
        if clip:
            model.vision.clip.save_pretrained(tmp / "vision")
        save_file(state, tmp / "weights.safetensors")


def load_exported(
    path: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[VmadModel, PreTrainedTokenizerBase]:
    """The exported model (eval mode) from plain HF directories and safetensors (and, for an
    AMoE-LoRA model, its peft adapter directory)."""
    path = Path(path)
    _check_dir(path, "export", "export")
    cfg = read_model_config(path)
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    llm = from_pretrained_strict(LlamaForCausalLM, path / "llm", dtype=dtype)
    if (path / "vision").is_dir():  # a CLIP tower, exported whole
        bb = Backbone(
            cfg=cfg,
            vision=VisionTower(
                clip=from_pretrained_strict(CLIPVisionModel, path / "vision", dtype=dtype),
                select_layer=cfg.vision.select_layer,
            ),
            llm=llm,
            sam=build_sam(cfg.sam).to(dtype),
        )
        names = EXPORT_PARTS
    else:  # a tower on an installed backbone (small): rebuilt, its adaptors in the safetensors
        bb = BACKBONES[cfg.preset](cfg, tokenizer, dtype, llm)
        names = ("vision", *EXPORT_PARTS)
    adapter = path / "adapter"
    model = assemble(bb, tokenizer, _load_adapter(bb.llm, adapter) if adapter.is_dir() else bb.llm)
    expected = set(_state(model, names, trained_only=False, keys_only=True))
    parts = model.parts()
    load_parts({n: parts[n] for n in names}, path / "weights.safetensors", expected)
    _set_meta(model, _read_meta(path))
    return model.eval(), tokenizer


class Checkpoint:
    """A checkpoint directory on disk, loaded on demand: ``config`` is cheap (config.json),
    :meth:`load` builds the model. What the Kedro dataset hands to nodes, so a node loads the
    model once, with this machine's weight paths, and only when it needs it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _check_dir(self.path, "checkpoint", "train")

    @property
    def config(self) -> ModelConfig:
        return read_model_config(self.path)

    @property
    def trained_on(self) -> dict:
        """What the model was trained on (``splitting.training_record``); {} if unrecorded."""
        return _read_meta(self.path).get("trained_on", {})

    @property
    def decision(self) -> dict:
        """The calibrated decision thresholds (``training.calibration``); {} if uncalibrated."""
        return _read_meta(self.path).get("decision", {})

    def load(
        self, weights: WeightsConfig | None = None, *, dtype: torch.dtype = torch.float32
    ) -> tuple[VmadModel, PreTrainedTokenizerBase]:
        return load_checkpoint(self.path, weights=weights, dtype=dtype)

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r})"
