"""The llava7b_sam_h preset through its real code path, on tiny checkpoints in the real formats;
and the merged export, reloaded without peft."""

import dataclasses
import json

import pytest
import torch
from helpers.checkpoints import TINY_SAM, make_tiny_llava_dir, make_tiny_sam_checkpoint
from helpers.models import CFG as TINY_CFG
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from vmad_pipeline import prompts
from vmad_pipeline.configs import (
    ConfigError,
    DsslConfig,
    LossWeights,
    LtcConfig,
    ModelConfig,
    ProjectorConfig,
    WeightsConfig,
)
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.checkpoint import (
    export_model,
    load_checkpoint,
    load_exported,
    save_checkpoint,
)
from vmad_pipeline.models.pretrained import load_llava, load_llava_tokenizer
from vmad_pipeline.prompts import encode_conversation, pad_batch
from vmad_pipeline.training.objective import weighted_loss
from vmad_pipeline.training.tokenizer import train_tokenizer

B = 2


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return WeightsConfig(
        llava_dir=str(make_tiny_llava_dir(root / "llava")),
        sam_checkpoint=str(make_tiny_sam_checkpoint(root / "sam_tiny.pth")),
    )


def real_cfg(weights, projector="mlp"):
    return ModelConfig(
        preset="llava7b_sam_h",
        projector=ProjectorConfig(name=projector, heads=2, ltc=LtcConfig(heads=2, levels=(1, 2))),
        sam=TINY_SAM,
        dssl=DsslConfig(boxes=4, queue_size=4, proj_dim=8, meta_hidden=8),
        frozen=("vision", "sam_encoder"),
        weights=weights,
    )


def batch(model, tokenizer):
    ids, labels = zip(
        *[
            encode_conversation(
                tokenizer, prompts.seg_prompt(c), prompts.SEG_ANSWER, model.num_image_tokens
            )
            for c in ("screw", "carpet")
        ],
        strict=True,
    )
    input_ids, att = pad_batch(ids, tokenizer.pad_token_id)
    label_ids, _ = pad_batch(labels, -100)
    g = torch.Generator().manual_seed(0)
    clip, sam = model.config.vision.image_size, model.config.sam.image_size
    masks = torch.zeros(B, sam, sam)
    masks[1, :16, :16] = 1
    return dict(
        images_clip=torch.rand(B, 3, clip, clip, generator=g),
        images_sam=torch.rand(B, 3, sam, sam, generator=g),
        input_ids=input_ids,
        attention_mask=att,
        labels=label_ids,
        masks=masks,
    )


def randomise_lora(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)


def test_real_preset_builds_from_the_checkpoints(weights):
    tokenizer = load_llava_tokenizer(weights.llava_dir)
    model = build_vmad(real_cfg(weights), tokenizer, train_classes=["screw"])
    parts = load_llava(weights.llava_dir)
    # Sizes come from the checkpoint, not from the parameters file.
    assert model.config.vision == parts.vision_config
    assert model.config.llm == parts.llm_config
    assert model.num_image_tokens == parts.vision_config.grid**2
    # LLaVA's projector starts the mlp projector; its CLIP tower is the vision tower.
    torch.testing.assert_close(
        model.projector.mlp[0].weight, parts.projector_state["linear_1.weight"]
    )
    torch.testing.assert_close(
        model.vision.clip.state_dict()["embeddings.patch_embedding.weight"],
        parts.vision.state_dict()["embeddings.patch_embedding.weight"],
    )
    assert tokenizer.convert_tokens_to_ids(prompts.SEG_TOKEN) == model.seg_token_id
    assert model.llm.get_input_embeddings().weight.shape[0] == len(tokenizer)
    # Training: frozen encoders get no gradient, LoRA and the SAM decoder do.
    model.train()
    out = model(**batch(model, tokenizer), class_idx=torch.tensor([0, 0]))
    weighted_loss(out, LossWeights()).backward()
    assert all(p.grad is None for p in model.vision.parameters())
    assert all(p.grad is None for p in model.sam.image_encoder.parameters())
    assert any(p.grad is not None for n, p in model.llm.named_parameters() if "lora_B" in n)
    assert model.sam.mask_decoder.output_upscaling[0].weight.grad is not None
    lora_targets = {
        n.split(".lora_A")[0].split(".")[-1]
        for n, _ in model.llm.named_parameters()
        if "lora_A" in n
    }
    assert lora_targets == {"q_proj", "v_proj"}


@pytest.mark.parametrize("projector", ["mlp", "ltc"])
def test_real_preset_checkpoint_round_trip(weights, tmp_path, projector):
    tokenizer = load_llava_tokenizer(weights.llava_dir)
    model = build_vmad(real_cfg(weights, projector), tokenizer, train_classes=["screw"])
    randomise_lora(model)
    model.train()
    b = batch(model, tokenizer)
    model(**b, class_idx=torch.tensor([0, 0]))  # fill DSSL's queues
    model.eval()
    ref = model(**b)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    saved = load_file(tmp_path / "ckpt" / "weights.safetensors")
    # Frozen encoders are not copied into the checkpoint: they reload from the local files.
    assert not any(k.startswith(("vision.", "sam_encoder.")) for k in saved)
    assert any(k.startswith("dssl.queue_t.") for k in saved)
    # No machine path in config.json: the frozen base is named by file and fingerprint.
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert "weights" not in meta["model"] and weights.llava_dir not in json.dumps(meta)
    assert meta["weights_files"]["sam_checkpoint"]["name"] == "sam_tiny.pth"
    with pytest.raises(ConfigError, match="conf/local/parameters_weights.yml"):
        load_checkpoint(tmp_path / "ckpt")  # this machine's paths must be given
    loaded, tok = load_checkpoint(tmp_path / "ckpt", weights=weights)
    got = loaded(**b)
    torch.testing.assert_close(got.logits, ref.logits)
    torch.testing.assert_close(got.mask_logits, ref.mask_logits)
    torch.testing.assert_close(loaded.dssl.queue_v.feats, model.dssl.queue_v.feats)
    assert len(tok) == len(tokenizer)


def test_moved_or_missing_weights_are_named(weights, tmp_path):
    tokenizer = load_llava_tokenizer(weights.llava_dir)
    missing = dataclasses.replace(weights, llava_dir=None)
    with pytest.raises(ConfigError, match="weights.llava_dir is not set"):
        build_vmad(real_cfg(missing), tokenizer)
    gone = dataclasses.replace(weights, sam_checkpoint=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="weights.sam_checkpoint"):
        build_vmad(real_cfg(gone), tokenizer)
    model = build_vmad(real_cfg(weights), tokenizer)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="weights.llava_dir"):
        load_checkpoint(tmp_path / "ckpt", weights=dataclasses.replace(weights, llava_dir=""))
    other = make_tiny_sam_checkpoint(tmp_path / "other_sam.pth", seed=1)
    with pytest.raises(ConfigError, match="weights.sam_checkpoint: .* is not the file"):
        load_checkpoint(
            tmp_path / "ckpt", weights=dataclasses.replace(weights, sam_checkpoint=str(other))
        )


@pytest.mark.parametrize("preset", ["tiny", "llava7b_sam_h"])
def test_export_merges_lora_and_reloads_without_peft(weights, tmp_path, preset):
    if preset == "tiny":
        tokenizer = train_tokenizer(
            [prompts.seg_prompt("screw") + " " + prompts.SEG_ANSWER] * 5, vocab_size=300
        )
        cfg = dataclasses.replace(TINY_CFG, projector=real_cfg(weights, "ltc").projector)
    else:
        tokenizer = load_llava_tokenizer(weights.llava_dir)
        cfg = real_cfg(weights, "ltc")
    model = build_vmad(cfg, tokenizer, train_classes=["screw"])
    randomise_lora(model)
    model.eval()
    b = batch(model, tokenizer)
    ref = model(**b)
    export_model(model, tokenizer, tmp_path / "export")
    assert not isinstance(model.llm, PeftModel)  # merged in place
    names = {p.name for p in (tmp_path / "export").iterdir()}
    assert names == {"config.json", "tokenizer", "llm", "vision", "weights.safetensors"}
    loaded, _ = load_exported(tmp_path / "export")
    assert type(loaded.llm) is LlamaForCausalLM and loaded.dssl is None
    assert not any(isinstance(m, LoraLayer) for m in loaded.modules())
    got = loaded(**b)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.mask_logits, ref.mask_logits, atol=1e-4, rtol=1e-4)
