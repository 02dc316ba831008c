"""Model shapes, which parameters learn, and the checkpoint / adapter round trip."""

import dataclasses
import json

import pytest
import torch
from helpers.models import CFG, VMAD_CFG, B, batch, tiny_tokenizer
from safetensors.torch import load_file

from vmad_pipeline import prompts
from vmad_pipeline.configs import (
    ConfigError,
    DsslConfig,
    LossWeights,
    LtcConfig,
    ModelConfig,
    ProjectorConfig,
)
from vmad_pipeline.losses.segmentation import mask_bce, mask_dice
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from vmad_pipeline.models.projectors import build_projector
from vmad_pipeline.prompts import encode_prompt, pad_batch
from vmad_pipeline.training.objective import weighted_loss


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_shapes_and_losses(tokenizer):
    model = build_vmad(CFG, tokenizer)
    out = model(**batch(model, tokenizer))
    assert model.num_image_tokens == (32 // 8 // 2) ** 2
    assert out.mask_logits.shape == (B, 32, 32)
    assert out.logits.shape[:2] == batch(model, tokenizer)["input_ids"].shape
    assert (
        weighted_loss(out, LossWeights()).ndim == 0
        and torch.isfinite(weighted_loss(out, LossWeights()))
        and out.bce > 0
        and out.dice > 0
    )


def test_no_seg_token_means_no_mask_loss(tokenizer):
    model = build_vmad(CFG, tokenizer)
    out = model(**batch(model, tokenizer, seg=False))
    assert out.mask_logits is None and out.bce is None
    assert torch.isfinite(weighted_loss(out, LossWeights()))


def test_wrong_image_token_count_is_an_error(tokenizer):
    model = build_vmad(CFG, tokenizer)
    b = batch(model, tokenizer)
    b["input_ids"] = b["input_ids"].masked_fill(
        b["input_ids"] == model.image_token_id, tokenizer.pad_token_id
    )
    with pytest.raises(ValueError, match="image tokens"):
        model(**b)


def test_gradients_reach_only_trainable_parameters(tokenizer):
    cfg = ModelConfig(**{**CFG.__dict__, "frozen": ("vision", "sam_encoder")})
    model = build_vmad(cfg, tokenizer)
    weighted_loss(model(**batch(model, tokenizer)), LossWeights()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            continue
        assert p.grad is None, f"frozen parameter {name} received a gradient"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("vision.", "sam.image_encoder.")) for n in trainable)
    # LLM: only LoRA matrices and the fully trained copies of embeddings and head.
    llm = [n for n in trainable if n.startswith("llm.")]
    assert llm and all("lora_" in n or "modules_to_save" in n for n in llm)
    assert any("lora_A" in n for n in llm) and any("embed_tokens" in n for n in llm)
    # ... and they do get gradients.
    assert model.seg_head.net[0].weight.grad is not None
    assert next(p for n, p in model.named_parameters() if "lora_B" in n).grad is not None


def test_checkpoint_round_trip(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build_vmad(CFG, tokenizer)
    # Make LoRA non-zero so the round trip really tests the adapter.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    model.eval()
    b = batch(model, tokenizer)
    ref = model(**b)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").rglob("*")}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "weights.safetensors",
        "config.json",
    } <= files
    adapter = load_file(tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("embed_tokens" in k for k in adapter)
    assert (
        json.loads((tmp_path / "ckpt" / "adapter" / "adapter_config.json").read_text())["r"]
        == CFG.lora.r
    )
    loaded, tok = load_checkpoint(tmp_path / "ckpt")
    got = loaded(**b)
    assert len(tok) == len(tokenizer)
    torch.testing.assert_close(got.logits, ref.logits)
    torch.testing.assert_close(got.mask_logits, ref.mask_logits)


def test_failed_save_leaves_no_partial_checkpoint(tokenizer, tmp_path, monkeypatch):
    model = build_vmad(CFG, tokenizer)
    target = tmp_path / "ckpt"
    save_checkpoint(model, tokenizer, target)
    before = sorted(p.name for p in target.rglob("*"))
    import vmad_pipeline.models.checkpoint as build

    monkeypatch.setattr(
        build, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    )
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, tokenizer, target)
    assert sorted(p.name for p in target.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="kedro run --pipeline train"):
        load_checkpoint(tmp_path / "nothing")


def test_predict_returns_maps_and_answers(tokenizer):
    model = build_vmad(CFG, tokenizer).eval()
    seqs = [
        encode_prompt(tokenizer, prompts.seg_prompt(c), model.num_image_tokens)
        for c in ("screw", "hex_nut")
    ]
    ids, att = pad_batch(seqs, tokenizer.pad_token_id, left=True)
    pred = model.predict(
        images_clip=torch.rand(B, 3, 32, 32),
        images_sam=torch.rand(B, 3, 32, 32),
        input_ids=ids,
        attention_mask=att,
        output_size=(48, 48),
        max_new_tokens=4,
    )
    assert pred.mask_logits.shape == (B, 48, 48)
    assert len(pred.answer_ids) == B and pred.seg_found.dtype == torch.bool


def test_predict_does_not_depend_on_the_batch(tokenizer):
    """A left-padded prompt gives the same answer and mask as the same prompt alone (positions
    count real tokens; once they counted the padding of the longer prompt beside it)."""
    torch.manual_seed(0)
    model = build_vmad(CFG, tokenizer).eval()
    for p in model.llm.parameters():  # random LoRA / head: the mask depends on every position
        p.data.normal_(std=0.2)
    images_clip, images_sam = torch.rand(B, 3, 32, 32), torch.rand(B, 3, 32, 32)
    seqs = [
        encode_prompt(tokenizer, prompts.seg_prompt(c), model.num_image_tokens)
        for c in ("screw", "hex_nut_with_a_long_name")
    ]

    def predict(index, seqs_):
        ids, att = pad_batch(seqs_, tokenizer.pad_token_id, left=True)
        return model.predict(
            images_clip=images_clip[index],
            images_sam=images_sam[index],
            input_ids=ids,
            attention_mask=att,
            output_size=(32, 32),
            max_new_tokens=4,
        )

    both = predict(slice(0, 2), seqs)
    alone = predict(slice(0, 1), seqs[:1])  # "screw" is the shorter one: padded in the batch
    assert both.answer_ids[0] == alone.answer_ids[0]
    torch.testing.assert_close(both.mask_logits[0], alone.mask_logits[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "name,tokens", [("mlp", 16), ("avgpool", 4), ("resampler", 4), ("ldpv2", 4)]
)
def test_projector_token_counts(name, tokens):
    proj = build_projector(ProjectorConfig(name=name), in_dim=8, out_dim=12, grid=4)
    out = proj(torch.randn(3, 16, 8))
    assert proj.num_tokens == tokens and out.shape == (3, tokens, 12)


@pytest.mark.parametrize("name", ["resampler", "ldpv2"])
def test_projectors_train_inside_the_model(tokenizer, name):
    cfg = ModelConfig(**{**CFG.__dict__, "projector": ProjectorConfig(name=name, heads=2)})
    model = build_vmad(cfg, tokenizer)
    weighted_loss(model(**batch(model, tokenizer)), LossWeights()).backward()
    assert all(p.grad is not None for p in model.projector.parameters())


def test_ldpv2_position_conv_is_residual():
    proj = build_projector(ProjectorConfig(name="ldpv2"), in_dim=8, out_dim=12, grid=4)
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        proj.peg.weight.zero_()
        proj.peg.bias.zero_()
    pooled = torch.nn.functional.avg_pool2d(proj.mlp(x).transpose(1, 2).reshape(2, 12, 4, 4), 2)
    torch.testing.assert_close(proj(x), pooled.flatten(2).transpose(1, 2))


def test_projector_pool_must_divide_grid():
    with pytest.raises(ConfigError, match="pool"):
        build_projector(ProjectorConfig(name="avgpool", pool=3), in_dim=8, out_dim=8, grid=4)


def test_dice_and_bce_reference_values():
    logits = torch.tensor([[[0.0, 10.0], [-10.0, 0.0]]])
    target = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    p = logits.sigmoid()
    expected_dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    torch.testing.assert_close(mask_dice(logits, target), expected_dice)
    expected_bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    torch.testing.assert_close(mask_bce(logits, target), expected_bce, atol=1e-4, rtol=1e-4)
    # An empty ground truth pushes toward an empty prediction.
    empty = torch.zeros(1, 2, 2)
    assert mask_dice(torch.full((1, 2, 2), -5.0), empty) < mask_dice(
        torch.full((1, 2, 2), 5.0), empty
    )


def test_vmad_trains_dssl_and_ltc_end_to_end(tokenizer):
    """Full VMAD: the PBSD loss is part of the total and reaches the LLM's LoRA and LTC."""
    torch.manual_seed(0)
    model = build_vmad(VMAD_CFG, tokenizer, train_classes=["screw", "carpet"])
    assert model.config.dssl.classes == ("carpet", "screw")
    b = batch(model, tokenizer)
    b["masks"][0] = 0  # image 0 normal, image 1 anomalous (both class 0: one valid class)
    b["masks"][1, :8, :8] = 1
    model.train()
    first = model(**b, class_idx=torch.tensor([0, 0]))
    assert first.pbsd is not None  # the batch alone has both states of class 0
    out = model(**b, class_idx=torch.tensor([0, 0]))
    w = LossWeights()
    expected = (
        w.txt * out.ce
        + w.bce * out.bce
        + w.dice * out.dice
        + w.pbsd * out.pbsd
        + w.patch_bce * out.patch_bce
    )
    torch.testing.assert_close(weighted_loss(out, w), expected)
    assert out.pbsd > 0 and out.patch_bce > 0
    model.zero_grad()
    (out.pbsd).backward()
    lora = [p.grad for n, p in model.llm.named_parameters() if "lora_B" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in lora), "PBSD must reach the LLM"
    assert model.dssl.ctx.grad is not None
    assert int(model.dssl.queue_v.count.sum()) == 4  # two calls x two images enqueued


def test_dssl_is_off_without_class_indices_or_when_disabled(tokenizer):
    model = build_vmad(VMAD_CFG, tokenizer, train_classes=["screw"])
    assert model(**batch(model, tokenizer)).pbsd is None  # evaluation path: no DSSL
    off = build_vmad(dataclasses.replace(VMAD_CFG, dssl=DsslConfig(enabled=False)), tokenizer)
    assert off.dssl is None and "dssl" not in off.parts()
    assert off(**batch(off, tokenizer), class_idx=torch.tensor([0, 0])).pbsd is None


def test_checkpoint_restores_dssl_queues_and_ltc(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build_vmad(VMAD_CFG, tokenizer, train_classes=["screw", "carpet"])
    model.train()
    b = batch(model, tokenizer)
    model(**b, class_idx=torch.tensor([0, 1]))
    model.eval()
    ref = model(**b)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.dssl.classes == ("carpet", "screw")
    torch.testing.assert_close(loaded.dssl.queue_t.feats, model.dssl.queue_t.feats)
    assert torch.equal(loaded.dssl.queue_v.count, model.dssl.queue_v.count)
    torch.testing.assert_close(loaded(**b).mask_logits, ref.mask_logits)


def test_ltc_levels_out_of_range_name_the_setting(tokenizer):
    cfg = dataclasses.replace(
        VMAD_CFG, projector=ProjectorConfig(name="ltc", ltc=LtcConfig(heads=2, levels=(1, 7)))
    )
    with pytest.raises(ConfigError, match="projector.ltc.levels"):
        build_vmad(cfg, tokenizer)


def test_the_model_offers_everything_its_helpers_read(tokenizer):
    """extras, routing and generation read a model through public names only, listed by their
    protocols; a VmadModel has every one of them (a renamed or private method fails here)."""
    from vmad_pipeline.models.extras import OwnMaskModel
    from vmad_pipeline.models.generation import GeneratingModel
    from vmad_pipeline.models.routing import RoutedModel

    model = build_vmad(CFG, tokenizer)
    for protocol in (OwnMaskModel, RoutedModel, GeneratingModel):
        assert isinstance(model, protocol), protocol.__name__
    del model.seg_token_id
    assert not isinstance(model, OwnMaskModel)
