"""The small preset as a model: what trains, what is saved, SAM's batched decoder, mask evidence
and the decoding loop that draws the mask as it goes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.models import CFG, SMALL_CFG, B, batch, tiny_tokenizer
from safetensors.torch import load_file

from vmad_pipeline import prompts
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from vmad_pipeline.models.evidence import mask_summary
from vmad_pipeline.models.generation import generate_with_masks
from vmad_pipeline.models.sam import batched_masks
from vmad_pipeline.prompts import encode_prompt, pad_batch


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_only_the_adaptors_and_neck_train_around_the_backbone(tokenizer):
    """One backbone object serves both branches; none of it learns, its BatchNorm stays in eval
    mode in training, and gradients reach the adaptors, the neck, SAM's decoder and LoRA."""
    model = build_vmad(SMALL_CFG, tokenizer, train_classes=["screw", "carpet"]).train()
    backbone = model.vision.backbone
    assert model.sam.image_encoder.backbone is backbone and not backbone.net.training
    out = model(**batch(model, tokenizer), class_idx=torch.tensor([0, 1]))
    (out.ce + out.bce + out.dice + out.pbsd).backward()
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    for part in (model.vision.adaptors, model.sam.image_encoder.lateral, model.sam.mask_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert model.projector.positions.grad is not None


def test_checkpoint_leaves_the_installed_backbone_out(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build_vmad(SMALL_CFG, tokenizer, train_classes=["screw", "carpet"]).eval()
    with torch.no_grad():
        for p in model.vision.adaptors.parameters():
            p.normal_()
    b = batch(model, tokenizer)
    ref = model(**b)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    keys = load_file(tmp_path / "ckpt" / "weights.safetensors").keys()
    assert not any("backbone" in k for k in keys)  # 4.7 M parameters rebuilt from the package
    assert any(k.startswith("vision.adaptors") for k in keys)
    assert any(k.startswith("sam_encoder.neck") for k in keys)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    got = loaded(**b)
    torch.testing.assert_close(got.logits, ref.logits)
    torch.testing.assert_close(got.mask_logits, ref.mask_logits)


def test_batched_decoder_equals_sams_own_per_image_call(tokenizer):
    """batched_masks takes B images with one prompt each in one call; SAM's MaskDecoder does the
    same one image at a time."""
    model = build_vmad(CFG, tokenizer).eval()
    sam = model.sam
    torch.manual_seed(0)
    emb = torch.randn(3, CFG.sam.prompt_dim, CFG.sam.grid, CFG.sam.grid)
    sparse = torch.randn(3, CFG.sam.prompt_dim)
    with torch.no_grad():
        got = batched_masks(sam.mask_decoder, emb, sam.prompt_encoder, sparse)
        for i in range(3):
            low, _ = sam.mask_decoder(
                image_embeddings=emb[i : i + 1],
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse[i].view(1, 1, -1),
                dense_prompt_embeddings=sam.prompt_encoder.no_mask_embed.weight.reshape(
                    1, -1, 1, 1
                ).expand(1, -1, CFG.sam.grid, CFG.sam.grid),
                multimask_output=False,
            )
            torch.testing.assert_close(got[i : i + 1], low, atol=1e-5, rtol=1e-4)


def test_mask_summary_by_hand():
    probs = torch.zeros(1, 6, 6)
    probs[0, 0:2, 4:6] = 1.0  # a 2 x 2 square in the top-right cell of the 3 x 3 grid
    s = mask_summary(probs)[0]
    assert s[0].item() == pytest.approx(4 / 36) and s[1].item() == 1.0
    assert (s[2].item(), s[3].item()) == pytest.approx((5 / 6, 1 / 6))  # centroid x, y
    assert (s[4].item(), s[5].item()) == pytest.approx((1 / 12, 1 / 12))  # spread of 2 cells
    grid = s[6:].view(3, 3)
    assert grid[0, 2].item() == pytest.approx(1.0) and grid.sum().item() == pytest.approx(1.0)


def _prompts(model, tokenizer, cats):
    seqs = [encode_prompt(tokenizer, prompts.vqa_prompt(c), model.num_image_tokens) for c in cats]
    return pad_batch(seqs, tokenizer.pad_token_id, left=True)


def test_greedy_loop_equals_transformers_generate(tokenizer):
    """Without evidence, our decoding loop (KV cache, [SEG] drawn on the way) writes exactly the
    tokens transformers' greedy generate writes for the same left-padded prompts."""
    torch.manual_seed(0)
    model = build_vmad(CFG, tokenizer).eval()
    for p in model.llm.parameters():
        p.data.normal_(std=0.3)
    ids, att = _prompts(model, tokenizer, ["screw", "hex_nut_with_a_long_name"])
    images = torch.rand(B, 3, 32, 32)
    with torch.no_grad():
        embeds, _, visual, _ = model.embed_inputs(ids, images)
        ours = generate_with_masks(
            model, embeds, att, images, visual, max_new_tokens=6, output_size=(8, 8)
        )
        ref = model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=att,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    for row, want in zip(ours.answer_ids(), ref.tolist(), strict=True):
        assert row == want[: len(row)] and len(row) >= 1


def test_evidence_starts_at_zero_and_then_changes_the_answer(tokenizer):
    """A new model with mask evidence predicts what the same model without it predicts (the
    evidence MLP starts at zero); once it is not zero, the tokens after [SEG] read it."""
    cfg = dataclasses.replace(CFG, seg_evidence=True)
    torch.manual_seed(0)
    model = build_vmad(cfg, tokenizer).eval()
    ids, att = _prompts(model, tokenizer, ["screw", "carpet"])
    seg = tokenizer.convert_tokens_to_ids(prompts.SEG_TOKEN)
    # [SEG]'s own output cannot read the mask it draws: the token after it can
    kwargs = dict(
        images_clip=torch.rand(B, 3, 32, 32),
        images_sam=torch.rand(B, 3, 32, 32),
        input_ids=ids,
        attention_mask=att,
        output_size=(16, 16),
        max_new_tokens=1,
        forced=(seg, seg),
    )
    with_zero = model.predict(**kwargs)
    evidence, model.evidence = model.evidence, None
    without = model.predict(**kwargs)
    torch.testing.assert_close(with_zero.free_logits, without.free_logits)
    model.evidence = evidence
    with torch.no_grad():
        model.evidence.net[-1].weight.normal_()
    changed = model.predict(**kwargs)
    assert not torch.allclose(changed.free_logits, without.free_logits)
    torch.testing.assert_close(changed.mask_logits, without.mask_logits)  # the mask comes first


def test_training_with_evidence_reads_the_oracle_mask(tokenizer):
    """In training, oracle samples' evidence comes from the true mask: the loss of the answer
    after [SEG] depends on it, and the evidence MLP gets gradients."""
    cfg = dataclasses.replace(CFG, seg_evidence=True)
    torch.manual_seed(0)
    model = build_vmad(cfg, tokenizer).train()
    with torch.no_grad():
        model.evidence.net[-1].weight.normal_()
    b = batch(model, tokenizer)
    b["input_ids"], b["labels"] = _seg_then_text(tokenizer, model)
    b["attention_mask"] = (b["input_ids"] != tokenizer.pad_token_id).long()
    oracle = torch.tensor([True, True])
    first = model(**b, oracle=oracle)
    other = dict(b, masks=1 - b["masks"])
    assert not torch.allclose(first.ce, model(**other, oracle=oracle).ce)
    first.ce.backward()
    assert model.evidence.net[0].weight.grad.abs().sum() > 0


def _seg_then_text(tokenizer, model):
    from vmad_pipeline.prompts import encode_conversation

    answer = prompts.detection_answer(anomalous=True, location="top left")
    pairs = [
        encode_conversation(tokenizer, prompts.vqa_prompt(c), answer, model.num_image_tokens)
        for c in ("screw", "carpet")
    ]
    ids, _ = pad_batch([p[0] for p in pairs], tokenizer.pad_token_id)
    labels, _ = pad_batch([p[1] for p in pairs], -100)
    return ids, labels


def test_a_follow_up_reads_the_earlier_masks_evidence_as_in_training(tokenizer):
    """A conversation's second answer: the predicted next token's logits, given the first turn's
    mask as ``prompt_masks``, equal the training forward's at that position with the same mask
    as the oracle (every token after the first [SEG] reads it, the prompt's included)."""
    cfg = dataclasses.replace(CFG, seg_evidence=True)
    torch.manual_seed(0)
    model = build_vmad(cfg, tokenizer).eval()
    with torch.no_grad():
        model.evidence.net[-1].weight.normal_()
    first = (prompts.vqa_prompt("screw"), prompts.detection_answer(anomalous=True))
    ids, _ = prompts.encode_turns(
        tokenizer, [first, ("Where is it?", None)], model.num_image_tokens
    )
    ids = torch.tensor([ids])
    images = torch.rand(1, 3, 32, 32)
    masks = (torch.rand(1, 32, 32) > 0.8).float()
    with torch.no_grad():
        trained = model(
            images_clip=images,
            images_sam=images,
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            masks=masks,
            oracle=torch.tensor([True]),
        )
    kwargs = dict(
        images_clip=images,
        images_sam=images,
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        output_size=(32, 32),
        max_new_tokens=1,
    )
    chat = model.predict(**kwargs, prompt_masks=masks)
    torch.testing.assert_close(chat.free_logits, trained.logits[:, -1])
    blind = model.predict(**kwargs)  # without the earlier mask the answer reads nothing
    assert not torch.allclose(blind.free_logits, trained.logits[:, -1])
