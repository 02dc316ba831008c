"""Tiny checkpoints in exactly the formats of the real preset's files, made by the tests.

* ``make_tiny_llava_dir``: an HF-format ``LlavaForConditionalGeneration`` directory (config.json,
  generation_config.json, model.safetensors, tokenizer files) like llava-hf/llava-1.5-7b-hf,
  whose tokenizer has ``<image>`` and ``<pad>`` appended after the base vocabulary but no
  ``[SEG]``.
* ``make_tiny_sam_checkpoint``: a flat state dict saved with ``torch.save``, like
  ``sam_vit_h_4b8939.pth`` (keys ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``;
  SAM's pixel mean/std are non-persistent buffers, so they are not in it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from vmad_pipeline.configs import SamConfig
from vmad_pipeline.models.sam import build_sam
from vmad_pipeline.prompts import IMAGE_TOKEN

# A SAM with ViT-H's structure (windowed blocks plus one global block) at toy sizes.
TINY_SAM = SamConfig(
    image_size=64,
    patch_size=16,
    embed_dim=32,
    depth=2,
    num_heads=2,
    window_size=2,  # 4 x 4 grid: block 0 attends in 2 x 2 windows, block 1 globally
    global_attn_indexes=(1,),
    prompt_dim=32,
    decoder_depth=2,
    decoder_mlp_dim=64,
    decoder_heads=2,
)

# CLIP 56 px / patch 14 -> a 4 x 4 grid (LLaVA-1.5: 336 / 14 -> 24 x 24).
TINY_CLIP = dict(
    image_size=56,
    patch_size=14,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    projection_dim=32,
)
TINY_LLAMA = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    tie_word_embeddings=False,  # as LLaVA-1.5
)
SENTENCES = [
    "USER: <image> Are there any abnormalities present in the bottle? ASSISTANT: It is.",
    "Is there any defect in the metal nut? Yes. A scratch on the surface.",
    "No. The screw looks normal and the thread is intact.",
]


def make_tiny_tokenizer(*, image: bool = True, pad: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level BPE with LLaMA's specials first and LLaVA-1.5's ``<image>``, ``<pad>`` last."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],  # ids 0, 1, 2 as in LLaMA
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if image:
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)  # 32000 in LLaVA-1.5
    if pad:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})  # 32001 in LLaVA-1.5
    return tokenizer


def tiny_llava_config(tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    grid = TINY_CLIP["image_size"] // TINY_CLIP["patch_size"]
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**TINY_CLIP),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **TINY_LLAMA,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=grid * grid,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


# The key layout of the llava-hf hub files (transformers < 4.52 module names), from the
# in-memory names of transformers 5 (whose own save_pretrained writes yet another mix).
_HUB_PREFIXES = [
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
]


def _hub_key(key: str) -> str:
    key = key.replace("model.vision_tower.vision_model.", "model.vision_tower.")
    for new, old in _HUB_PREFIXES:
        if key.startswith(new):
            return old + key[len(new) :]
    raise KeyError(key)


def make_tiny_llava_dir(path: str | Path, *, seed: int = 0, hub_layout: bool = False) -> Path:
    """A random tiny LLaVA-1.5 saved with ``save_pretrained`` (safetensors) plus its tokenizer.

    ``hub_layout`` rewrites the weights under the key names of the llava-hf hub files
    (``language_model.model.*``, ``language_model.lm_head.weight``,
    ``vision_tower.vision_model.*``, ``multi_modal_projector.*``).
    """
    path = Path(path)
    tokenizer = make_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(tiny_llava_config(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if hub_layout:
        state = {_hub_key(k): v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return path


def make_tiny_sam_checkpoint(path: str | Path, cfg: SamConfig = TINY_SAM, *, seed: int = 0) -> Path:
    """``build_sam(cfg).state_dict()`` saved with ``torch.save``, as sam_vit_h_4b8939.pth."""
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = build_sam(cfg).state_dict()
    torch.save(state, path)
    return path
