"""Loaders of the real preset (models/pretrained.py) on tiny checkpoints in the real formats."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from helpers.checkpoints import (
    TINY_CLIP,
    TINY_LLAMA,
    TINY_SAM,
    make_tiny_llava_dir,
    make_tiny_sam_checkpoint,
    make_tiny_tokenizer,
)
from safetensors.torch import load_file, save_file
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlavaForConditionalGeneration

from vmad_pipeline.configs import ConfigError, LLMConfig, SamConfig, VisionConfig
from vmad_pipeline.models.pretrained import SAM_VIT_H, llava_parts, load_llava, load_sam
from vmad_pipeline.models.sam import build_sam
from vmad_pipeline.prompts import IMAGE_TOKEN, SEG_TOKEN

# --------------------------------------------------------------------------- SAM


def segment_anything_sam(cfg: SamConfig) -> Sam:
    """``segment_anything.build_sam._build_sam`` with its hard-coded sizes taken from ``cfg``.

    ``_build_sam`` fixes image 1024, patch 16, prompt 256, decoder (2, 2048, 8) and window 14,
    so it cannot build a tiny SAM; every other argument is copied verbatim.
    """
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.depth,
            embed_dim=cfg.embed_dim,
            img_size=cfg.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(cfg.global_attn_indexes),
            window_size=cfg.window_size,
            out_chans=cfg.prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_dim,
            image_embedding_size=(cfg.grid, cfg.grid),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_heads,
            ),
            transformer_dim=cfg.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,  # a constant in _build_sam, whatever the sizes
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def structure(model: nn.Module) -> tuple[dict, list]:
    """Parameter/buffer shapes plus the size attributes that shapes do not reveal."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    attrs = [
        (
            name,
            type(m).__name__,
            *(getattr(m, a, None) for a in ("num_heads", "window_size", "eps")),
        )
        for name, m in model.named_modules()
    ]
    return shapes, attrs


def shape_diff(ours: dict, ref: dict) -> dict:
    return {k: (v, ref.get(k)) for k, v in ours.items() if ref.get(k) != v}


def test_build_sam_has_the_keys_and_shapes_of_segment_anything():
    with torch.device("meta"):
        ours, ref = structure(build_sam(TINY_SAM)), structure(segment_anything_sam(TINY_SAM))
    assert list(ours[0]) == list(ref[0])  # same keys, same order
    assert shape_diff(ours[0], ref[0]) == {}
    assert ours[1] == ref[1]


def test_sam_vit_h_builds_the_registry_vit_h():
    # On the meta device: shapes without allocating ViT-H's 2.5 GB (the registry's builder
    # only calls torch.load when given a checkpoint).
    with torch.device("meta"):
        ours, ref = structure(build_sam(SAM_VIT_H)), structure(sam_model_registry["vit_h"]())
    assert list(ours[0]) == list(ref[0])
    assert shape_diff(ours[0], ref[0]) == {}
    assert ours[1] == ref[1]
    assert SAM_VIT_H.grid == 64


def test_sam_checkpoint_has_the_real_key_layout(tmp_path):
    state = torch.load(make_tiny_sam_checkpoint(tmp_path / "sam.pth"), weights_only=True)
    assert {k.split(".")[0] for k in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert "pixel_mean" not in state and "pixel_std" not in state


def test_load_sam_matches_segment_anything(tmp_path):
    ckpt = make_tiny_sam_checkpoint(tmp_path / "sam.pth")
    ours = load_sam(TINY_SAM, ckpt)
    ref = segment_anything_sam(TINY_SAM)
    ref.load_state_dict(torch.load(ckpt, weights_only=True))
    assert not ours.training
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])

    torch.manual_seed(1)
    image = torch.rand(3, 48, 64) * 255  # unpadded, as after SAM's longest-side resize
    pre_ours, pre_ref = ours.preprocess(image), ref.preprocess(image)
    torch.testing.assert_close(pre_ours, pre_ref, rtol=0, atol=0)
    with torch.no_grad():
        emb_ours = ours.image_encoder(pre_ours[None])
        emb_ref = ref.image_encoder(pre_ref[None])
        torch.testing.assert_close(emb_ours, emb_ref, rtol=0, atol=0)

        points = (torch.rand(1, 2, 2) * 64, torch.tensor([[1, 0]]))
        box = torch.tensor([[4.0, 8.0, 40.0, 44.0]])
        outs = []
        for sam in (ours, ref):
            sparse, dense = sam.prompt_encoder(points=points, boxes=box, masks=None)
            outs.append(
                sam.mask_decoder(
                    image_embeddings=emb_ref,
                    image_pe=sam.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                )
            )
    (masks_ours, iou_ours), (masks_ref, iou_ref) = outs
    assert masks_ours.shape == (1, 3, 16, 16)
    torch.testing.assert_close(masks_ours, masks_ref, rtol=0, atol=0)
    torch.testing.assert_close(iou_ours, iou_ref, rtol=0, atol=0)


def test_load_sam_takes_the_checkpoint_weights(tmp_path):
    ckpt = make_tiny_sam_checkpoint(tmp_path / "sam.pth", seed=3)
    state = torch.load(ckpt, weights_only=True)
    loaded = load_sam(TINY_SAM, ckpt).state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("checkpoint", [None, "", "missing.pth"])
def test_load_sam_without_a_checkpoint_names_the_setting(tmp_path, checkpoint):
    path = None if checkpoint is None else (checkpoint and str(tmp_path / checkpoint))
    with pytest.raises(ConfigError, match="weights.sam_checkpoint") as err:
        load_sam(TINY_SAM, path)
    assert "conf/local/parameters_weights.yml" in str(err.value)


def test_load_sam_rejects_a_garbage_file(tmp_path):
    garbage = tmp_path / "sam.pth"
    garbage.write_bytes(b"\x00not a torch checkpoint" * 10)
    with pytest.raises(ConfigError, match="weights.sam_checkpoint.*not a readable"):
        load_sam(TINY_SAM, garbage)


def test_load_sam_rejects_a_checkpoint_of_another_depth(tmp_path):
    deeper = SamConfig(**{**TINY_SAM.__dict__, "depth": 3})
    ckpt = make_tiny_sam_checkpoint(tmp_path / "sam.pth", deeper)
    with pytest.raises(ConfigError) as err:
        load_sam(TINY_SAM, ckpt)
    msg = str(err.value)
    assert "weights.sam_checkpoint" in msg and "train.model.sam" in msg
    assert "image_encoder.blocks.2." in msg and "is not in the model" in msg


def test_load_sam_names_the_first_shape_mismatch(tmp_path):
    wider = SamConfig(**{**TINY_SAM.__dict__, "embed_dim": 48})
    ckpt = make_tiny_sam_checkpoint(tmp_path / "sam.pth", wider)
    with pytest.raises(ConfigError) as err:
        load_sam(TINY_SAM, ckpt)
    msg = str(err.value)
    assert "train.model.sam" in msg and "conf/local/parameters_weights.yml" in msg
    assert "image_encoder.pos_embed has shape (1, 4, 4, 48) in the checkpoint" in msg
    assert "(1, 4, 4, 32) in the model" in msg


# --------------------------------------------------------------------------- LLaVA


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return make_tiny_llava_dir(tmp_path_factory.mktemp("llava"))


def reference_llava(path) -> LlavaForConditionalGeneration:
    return LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True).eval()


def test_load_llava_vision_and_projector_reproduce_llavas_image_path(llava_dir):
    parts = load_llava(llava_dir)
    ref = reference_llava(llava_dir)
    pixels = torch.randn(2, 3, TINY_CLIP["image_size"], TINY_CLIP["image_size"])
    with torch.no_grad():
        ours = parts.vision(pixel_values=pixels, output_hidden_states=True).hidden_states
        theirs = ref.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
        for a, b in zip(ours, theirs.hidden_states, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

        # LLaVA's image path: hidden state vision_feature_layer, CLS dropped, Linear-GELU-Linear.
        w = parts.projector_state
        feats = ours[parts.vision_feature_layer][:, 1:]
        hidden = F.gelu(F.linear(feats, w["linear_1.weight"], w["linear_1.bias"]))
        tokens = F.linear(hidden, w["linear_2.weight"], w["linear_2.bias"])  # (B, 16, d_llm)
        expected = ref.model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(tokens, torch.stack(list(expected)), rtol=1e-6, atol=1e-6)


def test_load_llava_llm_reproduces_llavas_text_logits_and_greedy_decoding(llava_dir):
    parts = load_llava(llava_dir)
    ref = reference_llava(llava_dir)
    vocab = ref.config.text_config.vocab_size
    ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = parts.llm(input_ids=ids).logits
        theirs = ref(input_ids=ids).logits
    assert ours.shape[-1] == len(parts.tokenizer) == vocab + 1  # + [SEG]
    torch.testing.assert_close(ours[..., :vocab], theirs, rtol=0, atol=0)

    # [SEG]'s head row is the mean of the others: its logit never beats the best one.
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=parts.tokenizer.pad_token_id)
    out = parts.llm.generate(ids[:1], **kwargs)
    assert torch.equal(out, ref.generate(input_ids=ids[:1], **kwargs))


def test_load_llava_adds_seg_and_resizes_the_embeddings(llava_dir):
    saved = AutoTokenizer.from_pretrained(llava_dir, local_files_only=True)
    assert SEG_TOKEN not in saved.get_vocab()
    parts = load_llava(llava_dir)
    tok, llm = parts.tokenizer, parts.llm
    seg = tok.convert_tokens_to_ids(SEG_TOKEN)
    assert seg == len(saved)  # appended; existing ids unchanged
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == saved.convert_tokens_to_ids(IMAGE_TOKEN)
    assert tok.pad_token == "<pad>" and tok.pad_token_id == saved.pad_token_id
    assert SEG_TOKEN in tok.extra_special_tokens
    assert tok("It is [SEG].")["input_ids"].count(seg) == 1  # never split
    assert tok.decode(tok("It is [SEG].")["input_ids"], skip_special_tokens=True) == "It is ."
    assert llm.get_input_embeddings().weight.shape[0] == len(tok)
    assert llm.get_output_embeddings().weight.shape[0] == len(tok)
    assert llm.config.vocab_size == len(tok)
    assert llm.config.pad_token_id == tok.pad_token_id
    for emb in (llm.get_input_embeddings().weight, llm.get_output_embeddings().weight):
        torch.testing.assert_close(emb[seg], emb[:seg].mean(0))


def test_llava_parts_shares_the_loaded_modules(llava_dir):
    llava = reference_llava(llava_dir)
    tok = AutoTokenizer.from_pretrained(llava_dir, local_files_only=True)
    layer = llava.model.language_model.layers[1].self_attn.q_proj.weight
    ptr = layer.data_ptr()
    parts = llava_parts(llava, tok)
    assert parts.vision is llava.model.vision_tower
    assert parts.llm.model is llava.model.language_model
    assert parts.llm.model.layers[1].self_attn.q_proj.weight is layer
    assert parts.llm.model.layers[1].self_attn.q_proj.weight.data_ptr() == ptr
    assert parts.llm.config is parts.llm.model.config
    assert parts.llm.config.model_type == "llama"
    assert not parts.llm.training
    assert not any(t.is_meta for t in [*parts.llm.parameters(), *parts.llm.buffers()])
    n_llm = sum(p.numel() for p in parts.llm.parameters())
    n_decoder = sum(p.numel() for p in llava.model.language_model.parameters())
    assert n_llm == n_decoder + parts.llm.lm_head.weight.numel()


def test_load_llava_reports_sizes_and_projector_weights(llava_dir):
    parts = load_llava(llava_dir, dtype=torch.bfloat16)
    c, t = TINY_CLIP["hidden_size"], TINY_LLAMA["hidden_size"]
    assert {k: tuple(v.shape) for k, v in parts.projector_state.items()} == {
        "linear_1.weight": (t, c),
        "linear_1.bias": (t,),
        "linear_2.weight": (t, t),
        "linear_2.bias": (t,),
    }
    assert parts.vision_feature_layer == -2
    assert parts.vision_config == VisionConfig(
        image_size=56,
        patch_size=14,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        select_layer=-2,
    )
    assert parts.llm_config == LLMConfig(
        hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, max_positions=64
    )
    assert parts.llm.dtype == parts.vision.dtype == torch.bfloat16
    assert parts.projector_state["linear_1.weight"].dtype == torch.bfloat16


def test_load_llava_reads_the_hub_key_layout(tmp_path, llava_dir):
    hub = make_tiny_llava_dir(tmp_path / "hub", hub_layout=True)
    keys = set(load_file(hub / "model.safetensors"))
    assert "language_model.lm_head.weight" in keys
    assert "vision_tower.vision_model.post_layernorm.weight" in keys
    a, b = load_llava(hub), load_llava(llava_dir)
    for (name, x), (_, y) in zip(
        a.llm.state_dict().items(), b.llm.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name
    for (name, x), (_, y) in zip(
        a.vision.state_dict().items(), b.vision.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name
    assert torch.equal(a.projector_state["linear_2.weight"], b.projector_state["linear_2.weight"])


def test_llava_parts_adds_image_and_pad_when_missing(llava_dir):
    tok = make_tiny_tokenizer(image=False, pad=False)
    parts = llava_parts(reference_llava(llava_dir), tok)
    added = parts.tokenizer.convert_tokens_to_ids([SEG_TOKEN, IMAGE_TOKEN, "<pad>"])
    assert sorted(added) == [300, 301, 302]
    assert parts.tokenizer.pad_token == "<pad>" and parts.llm.config.pad_token_id == added[2]
    assert parts.llm.get_input_embeddings().weight.shape[0] == 303


def _llama_dir(path):
    path.mkdir()
    LlamaConfig(**TINY_LLAMA, vocab_size=300).save_pretrained(path)
    return path


def _without_config(path):
    path.mkdir()
    return path


def _without_weights(path):
    make_tiny_llava_dir(path)
    (path / "model.safetensors").unlink()
    return path


def _without_lm_head(path):
    make_tiny_llava_dir(path)
    state = load_file(path / "model.safetensors")
    (head,) = [k for k in state if k.endswith("lm_head.weight")]
    del state[head]
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "weights.llava_dir is not set"),
        (lambda p: p, "is not a directory"),
        (_without_config, "has no config.json"),
        (_llama_dir, "LlamaConfig.*not a LLaVA checkpoint"),
        (_without_weights, "has no loadable LLaVA weights"),
        (_without_lm_head, "lacks 1 weights.*lm_head.weight"),
    ],
)
def test_load_llava_rejects_what_is_not_a_llava_dir(tmp_path, make, message):
    path = make(tmp_path / "llava")
    with pytest.raises(ConfigError, match=message) as err:
        load_llava(path)
    msg = str(err.value)
    assert "weights.llava_dir" in msg and "conf/local/parameters_weights.yml" in msg
    if path is not None:
        assert str(path) in msg
