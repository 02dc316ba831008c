"""Loaders of the real preset ``llava7b_sam_h`` (method.md section 7): local files only.

* SAM: the original segment-anything checkpoint (``sam_vit_h_4b8939.pth``: a flat state dict
  saved with ``torch.save``), read into our ``build_sam`` of the configured size.
* LLaVA-1.5: an HF-format ``LlavaForConditionalGeneration`` directory, split into the pieces
  VMAD assembles itself: the CLIP tower, the projector's weights, a ``LlamaForCausalLM`` that
  shares the loaded decoder (no second copy of 7B weights) and the tokenizer with ``[SEG]``.

A path that is missing or does not hold what it should is a ``ConfigError`` that names the
setting to fill in and the file it lives in.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from segment_anything.modeling import Sam
from transformers import (
    AutoConfig,
    AutoTokenizer,
    CLIPVisionModel,
    LlamaForCausalLM,
    LlamaModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerBase,
)

from vmad_pipeline.configs import ConfigError, LLMConfig, ModelConfig, SamConfig, VisionConfig
from vmad_pipeline.datasets.manifest import file_sha256
from vmad_pipeline.models.sam import PIXEL_MEAN, PIXEL_STD, build_sam
from vmad_pipeline.prompts import IMAGE_TOKEN, SEG_TOKEN

log = logging.getLogger(__name__)

SAM_KEY = "weights.sam_checkpoint"
LLAVA_KEY = "weights.llava_dir"
WEIGHTS_FILE = "conf/local/parameters_weights.yml"
PAD_TOKEN = "<pad>"

# segment_anything/build_sam.py::build_sam_vit_h (the sizes of sam_vit_h_4b8939.pth).
SAM_VIT_H = SamConfig(
    image_size=1024,
    patch_size=16,
    embed_dim=1280,
    depth=32,
    num_heads=16,
    window_size=14,
    global_attn_indexes=(7, 15, 23, 31),
    prompt_dim=256,
    decoder_depth=2,
    decoder_mlp_dim=2048,
    decoder_heads=8,
)


def _where(key: str) -> str:
    return f"set {key} in {WEIGHTS_FILE}"


# --------------------------------------------------------------------------- SAM


def _state_mismatch(
    expected: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]
) -> tuple[int, str] | None:
    """(number of mismatching keys, description of the first) or None when they fit."""
    problems = []
    for key, want in expected.items():
        if key not in loaded:
            problems.append(
                f"{key} (model shape {tuple(want.shape)}) is missing from the checkpoint"
            )
        elif loaded[key].shape != want.shape:
            problems.append(
                f"{key} has shape {tuple(loaded[key].shape)} in the checkpoint but "
                f"{tuple(want.shape)} in the model"
            )
    problems += [
        f"{key} (checkpoint shape {tuple(value.shape)}) is not in the model"
        for key, value in loaded.items()
        if key not in expected
    ]
    return (len(problems), problems[0]) if problems else None


def load_sam(cfg: SamConfig, checkpoint: str | Path | None) -> Sam:
    """SAM of size ``cfg`` with the weights of an original segment-anything checkpoint.

    The model is built on the meta device and takes the checkpoint's tensors (``assign``), so
    ViT-H is neither randomly initialised nor held twice in memory.
    """
    if checkpoint is None or str(checkpoint).strip() == "":
        raise ConfigError(
            f"{SAM_KEY} is not set: the {cfg.image_size} px SAM needs its checkpoint "
            f"(sam_vit_h_4b8939.pth for ViT-H); {_where(SAM_KEY)}"
        )
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(f"{SAM_KEY}: no file at {path}; {_where(SAM_KEY)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: pickle, zip and torch errors alike
        raise ConfigError(
            f"{SAM_KEY}: {path} is not a readable torch checkpoint "
            f"({type(err).__name__}: {err}); {_where(SAM_KEY)}"
        ) from err
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(
            f"{SAM_KEY}: {path} is not a SAM state dict (a mapping of parameter names to "
            f"tensors, as in sam_vit_h_4b8939.pth); {_where(SAM_KEY)}"
        )

    with torch.device("meta"):
        sam = build_sam(cfg)
    expected = sam.state_dict()
    mismatch = _state_mismatch(expected, state)
    if mismatch is not None:
        count, first = mismatch
        raise ConfigError(
            f"{SAM_KEY}: {path} does not fit the SAM size in train.model.sam "
            f"({count} mismatching keys; first: {first}). Either train.model.sam does not "
            f"describe this checkpoint (ViT-H is pretrained.SAM_VIT_H) or {SAM_KEY} points at "
            f"the wrong file; {_where(SAM_KEY)}"
        )
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}  # as a copying load would
    sam.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers are not in the checkpoint: (re)create them on the CPU.
    sam.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
    sam.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)
    left = [n for n, t in [*sam.named_parameters(), *sam.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"load_sam left tensors on the meta device: {left}")
    return sam.eval()  # as segment_anything.build_sam._build_sam


# --------------------------------------------------------------------------- LLaVA


@dataclass
class LlavaParts:
    """The pieces of a LLaVA-1.5 checkpoint that VMAD assembles itself."""

    vision: CLIPVisionModel  # the CLIP tower (CLS still in its outputs)
    projector_state: dict[str, torch.Tensor]  # multi_modal_projector: linear_1.*, linear_2.*
    llm: LlamaForCausalLM  # shares the Llava's decoder and head; embeddings resized for [SEG]
    tokenizer: PreTrainedTokenizerBase  # with [SEG], <image> and a pad token
    vision_feature_layer: int  # CLIP hidden state fed to the projector (-2 in LLaVA-1.5)
    vision_config: VisionConfig  # sizes of the CLIP tower
    llm_config: LLMConfig  # sizes of the LLaMA decoder


def _llava_error(path: Path | str, msg: str) -> ConfigError:
    return ConfigError(f"{LLAVA_KEY}: {path} {msg}; {_where(LLAVA_KEY)}")


def _read_llava_config(path: Path) -> LlavaConfig:
    if not path.is_dir():
        raise _llava_error(path, "is not a directory")
    if not (path / "config.json").is_file():
        raise _llava_error(path, "has no config.json (expected an HF-format LLaVA-1.5 directory)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise _llava_error(path, f"has an unreadable config.json ({err})") from err
    if not isinstance(config, LlavaConfig):
        raise _llava_error(
            path,
            f"holds a {type(config).__name__} (model_type {config.model_type!r}), not a LLaVA "
            "checkpoint (LlavaForConditionalGeneration, model_type 'llava')",
        )
    return config


def _add_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Add [SEG] / <image> (extra special tokens) and a pad token where missing."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (SEG_TOKEN, IMAGE_TOKEN) if t not in vocab]
    added = list(missing)
    if missing:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": missing}, replace_extra_special_tokens=False
        )
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        if PAD_TOKEN not in vocab:
            added.append(PAD_TOKEN)
    return added


def _share_llm(llava: LlavaForConditionalGeneration) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` whose decoder and head ARE the Llava's (same tensors)."""
    with torch.device("meta"):  # skeleton only: its own modules are replaced right away
        llm = LlamaForCausalLM(llava.config.text_config)
    llm.model = llava.model.language_model
    llm.lm_head = llava.lm_head
    llm.config = llava.model.language_model.config
    llm.generation_config = llava.generation_config
    llm.train(llava.training)  # the skeleton starts in train mode, the loaded modules in eval
    left = [n for n, t in [*llm.named_parameters(), *llm.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"LlamaForCausalLM kept meta tensors after sharing: {left}")
    return llm


@torch.no_grad()
def _resize_embeddings(
    llm: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, n_before: int, added: list[str]
) -> None:
    """Resize to ``len(tokenizer)``; rows of the added tokens start at the mean of the others.

    transformers' mean resizing only covers rows beyond the old matrix; LLaVA-1.5 pads its
    vocabulary to 32064 rows, so ``[SEG]`` (32002) would otherwise inherit a padding row.
    """
    emb_in = llm.get_input_embeddings().weight
    emb_out = llm.get_output_embeddings().weight
    mean_in = emb_in[:n_before].float().mean(0)
    mean_out = emb_out[:n_before].float().mean(0)
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(added)
    emb_in = llm.get_input_embeddings().weight
    emb_out = llm.get_output_embeddings().weight
    emb_in[ids] = mean_in.to(emb_in.dtype)
    emb_out[ids] = mean_out.to(emb_out.dtype)


def llava_parts(
    llava: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase
) -> LlavaParts:
    """Split a loaded LLaVA into VMAD's pieces; adds [SEG] (and <image>, <pad>) to ``tokenizer``.

    The returned modules are the Llava's own (no copy); its ``lm_head`` and embeddings are
    replaced by resized ones in the returned LLM, so do not use ``llava`` itself afterwards.
    """
    config = llava.config
    vision = llava.model.vision_tower
    if not isinstance(vision, CLIPVisionModel):
        raise ConfigError(
            f"{LLAVA_KEY}: the vision tower is a {type(vision).__name__}; VMAD needs CLIP "
            "(LLaVA-1.5's CLIPVisionModel)"
        )
    if not isinstance(llava.model.language_model, LlamaModel):
        raise ConfigError(
            f"{LLAVA_KEY}: the language model is a {type(llava.model.language_model).__name__}; "
            "VMAD needs a LLaMA decoder (LLaVA-1.5)"
        )
    if not isinstance(config.vision_feature_layer, int):
        raise ConfigError(
            f"{LLAVA_KEY}: vision_feature_layer {config.vision_feature_layer!r} selects several "
            "CLIP layers; VMAD's projectors read one (LLaVA-1.5: -2)"
        )
    if config.vision_feature_select_strategy != "default":
        log.warning(
            "LLaVA vision_feature_select_strategy is %r; VMAD drops CLS as in 'default'",
            config.vision_feature_select_strategy,
        )
    n_before = len(tokenizer)
    added = _add_tokens(tokenizer)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id != config.image_token_id:
        log.warning(
            "tokenizer's %s id %s differs from the config's image_token_id %s",
            IMAGE_TOKEN,
            image_id,
            config.image_token_id,
        )
    llm = _share_llm(llava)
    _resize_embeddings(llm, tokenizer, n_before, added)
    llm.config.pad_token_id = tokenizer.pad_token_id
    llm.generation_config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        llm.config.bos_token_id = tokenizer.bos_token_id
    if tokenizer.eos_token_id is not None:
        llm.config.eos_token_id = tokenizer.eos_token_id

    vision_config, llm_config = _sizes(config)
    return LlavaParts(
        vision=vision,
        projector_state=dict(llava.model.multi_modal_projector.state_dict()),
        llm=llm,
        tokenizer=tokenizer,
        vision_feature_layer=config.vision_feature_layer,
        vision_config=vision_config,
        llm_config=llm_config,
    )


def _sizes(config: LlavaConfig) -> tuple[VisionConfig, LLMConfig]:
    """The CLIP tower's and the LLaMA decoder's sizes, as our configs."""
    vc, tc = config.vision_config, config.text_config
    vision = VisionConfig(
        image_size=vc.image_size,
        patch_size=vc.patch_size,
        hidden_size=vc.hidden_size,
        intermediate_size=vc.intermediate_size,
        num_layers=vc.num_hidden_layers,
        num_heads=vc.num_attention_heads,
        select_layer=config.vision_feature_layer,
    )
    llm = LLMConfig(
        hidden_size=tc.hidden_size,
        intermediate_size=tc.intermediate_size,
        num_layers=tc.num_hidden_layers,
        num_heads=tc.num_attention_heads,
        max_positions=tc.max_position_embeddings,
    )
    return vision, llm


def _llava_path(llava_dir: str | Path | None) -> Path:
    if llava_dir is None or str(llava_dir).strip() == "":
        raise ConfigError(
            f"{LLAVA_KEY} is not set: the llava7b_sam_h preset needs an HF-format "
            f"LLaVA-1.5-7B directory (e.g. llava-hf/llava-1.5-7b-hf); {_where(LLAVA_KEY)}"
        )
    return Path(llava_dir).expanduser()


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise _llava_error(path, f"has no loadable tokenizer ({err})") from err


def load_llava_tokenizer(llava_dir: str | Path | None) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer with the tokens ``load_llava`` adds (same ids)."""
    path = _llava_path(llava_dir)
    _read_llava_config(path)
    tokenizer = _load_tokenizer(path)
    _add_tokens(tokenizer)
    return tokenizer


def load_llava(llava_dir: str | Path | None, *, dtype: torch.dtype = torch.float32) -> LlavaParts:
    """Load an HF-format LLaVA-1.5 directory (weights + tokenizer) without any hub access."""
    path = _llava_path(llava_dir)
    config = _read_llava_config(path)
    tokenizer = _load_tokenizer(path)
    try:
        llava, info = LlavaForConditionalGeneration.from_pretrained(
            path, config=config, dtype=dtype, local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise _llava_error(path, f"has no loadable LLaVA weights ({err})") from err
    missing = sorted(info["missing_keys"]) + sorted(str(m[0]) for m in info["mismatched_keys"])
    if missing:
        raise _llava_error(
            path,
            f"lacks {len(missing)} weights of its config.json (first: {missing[0]}); "
            "is a shard missing?",
        )
    return llava_parts(llava, tokenizer)


# --------------------------------------------------------------------------- fingerprints


def weights_fingerprint(cfg: ModelConfig) -> dict[str, dict[str, object]]:
    """Names and fingerprints of the local weight files a preset is built on, recorded in the
    checkpoint instead of this machine's paths: the SAM checkpoint's full sha256 (one file of
    2.4 GB: seconds), and for the LLaVA directory the sha256 of its ``config.json`` with the name
    and size of every weight shard (hashing 14 GB of shards at every load would cost more than
    it protects: a shard of the same name and size with other contents is not caught).
    A path that does not exist is left out (the loader then names the setting to fix).
    """
    out: dict[str, dict[str, object]] = {}
    sam = Path(cfg.weights.sam_checkpoint or "").expanduser()
    if cfg.weights.sam_checkpoint and sam.is_file():
        out["sam_checkpoint"] = {"name": sam.name, "sha256": file_sha256(sam)}
    llava = Path(cfg.weights.llava_dir or "").expanduser()
    if cfg.weights.llava_dir and (llava / "config.json").is_file():
        shards = sorted(
            p for p in llava.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()
        )
        out["llava_dir"] = {
            "name": llava.name,
            "config_sha256": file_sha256(llava / "config.json"),
            "shards": {p.name: p.stat().st_size for p in shards},
        }
    return out
