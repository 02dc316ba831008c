"""Anomaly-OV's two stages (the expert alone, then instruction tuning with it frozen) and
IAD-Unify's region tokens, wired into the model and the trainer."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.models import SMALL_CFG
from helpers.training import corpus, train_config

from vmad_pipeline import prompts
from vmad_pipeline.configs import ExpertConfig, RegionConfig
from vmad_pipeline.configs.model import LoraConfig
from vmad_pipeline.models.anomaly_expert import ADVERBS
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.training.fit import fit_expert, fit_vmad, make_job

EXPERT = ExpertConfig(name="anomaly_ov", width=16, heads=2, steps=4, batch_size=4)
BOTH = dataclasses.replace(
    SMALL_CFG,
    lora=LoraConfig(dropout=0.0),
    expert=EXPERT,
    region_tokens=RegionConfig(enabled=True, source="own_mask"),
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus(tmp_path_factory.mktemp("expert_corpus"))


def _params(model, prefix: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix)}


def test_stage_two_freezes_exactly_the_expert(data, tmp_path):
    rows, roots, qa, tok = data
    cfg = train_config(tmp_path, steps=3)
    stage1 = fit_expert(make_job(rows, roots, qa, tok, cfg, BOTH))
    fresh = build_vmad(BOTH, tok, seed=cfg.seed, train_classes=["bolt", "part"])
    trained_in_stage1 = any(
        not torch.equal(v, fresh.expert.state_dict()[k]) for k, v in stage1["state"].items()
    )
    assert trained_in_stage1 and len(stage1["losses"]) == EXPERT.steps

    trained = fit_vmad(make_job(rows, roots, qa, tok, cfg, BOTH), expert=stage1)
    model = trained.model
    # the expert holds stage 1's weights, untouched by stage 2, and is the only frozen part
    for key, value in stage1["state"].items():
        assert torch.equal(model.expert.state_dict()[key], value), key
    assert not any(p.requires_grad for p in model.expert.parameters())
    without = build_vmad(
        dataclasses.replace(BOTH, expert=ExpertConfig(), region_tokens=RegionConfig(enabled=True)),
        tok,
        train_classes=["bolt", "part"],
    )
    grads = {n for n, p in model.named_parameters() if p.requires_grad}
    grads_without = {n for n, p in without.named_parameters() if p.requires_grad}
    assert grads == grads_without  # exactly the expert's parameters left the trained set
    assert trained.summary["expert_stage"]["reused"] is False


def test_stage_one_is_reused_until_its_inputs_change(data, tmp_path):
    rows, roots, qa, tok = data
    cfg = train_config(tmp_path)
    first = fit_expert(make_job(rows, roots, qa, tok, cfg, BOTH))
    again = fit_expert(make_job(rows, roots, qa, tok, cfg, BOTH))
    assert again["reused"] and again["key"] == first["key"]
    assert all(torch.equal(again["state"][k], v) for k, v in first["state"].items())
    # the region tokens and the LLM do not enter stage 1: same key
    other_llm = dataclasses.replace(BOTH, region_tokens=RegionConfig())
    assert fit_expert(make_job(rows, roots, qa, tok, cfg, other_llm))["reused"]
    changed = dataclasses.replace(BOTH, expert=dataclasses.replace(EXPERT, lr=5e-4))
    new = fit_expert(make_job(rows, roots, qa, tok, cfg, changed))
    assert not new["reused"] and new["key"] != first["key"]
    assert fit_expert(make_job(rows, roots, qa, tok, cfg, SMALL_CFG)) == {}  # no expert, no stage 1


def test_the_expert_needs_stage_one(data, tmp_path):
    rows, roots, qa, tok = data
    from vmad_pipeline.training.fit import run_job

    job = make_job(rows, roots, qa, tok, train_config(tmp_path), BOTH)
    with pytest.raises(ValueError, match="stage-1"):
        run_job(job)


def _prompt_ids(model, tok, categories):
    seqs = [
        prompts.encode_prompt(tok, prompts.vqa_prompt(c), model.image_slots) for c in categories
    ]
    return prompts.pad_batch(seqs, tok.pad_token_id, left=True)


def test_placeholders_hold_visual_adverb_suspicious_and_region_tokens(data):
    _, _, _, tok = data
    model = build_vmad(BOTH, tok, train_classes=["part"]).eval()
    slots = model.image_slots
    assert (slots.visual, slots.expert, slots.region) == (4, 4, 4) and slots.total == 13
    ids, _ = _prompt_ids(model, tok, ["part"])
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        image = model.get_image_features(images)
        emb = model.embed_inputs(ids, images, image=image)
        where = torch.nonzero(ids[0] == model.image_token_id).flatten()
        filled = emb.embeds[0, where]
        torch.testing.assert_close(filled[:4], image.visual[0])
        score = float(emb.expert.score[0])
        hi, mid = EXPERT.adverbs
        word = ADVERBS[0 if score >= hi else 1 if score >= mid else 2]
        word_ids = torch.tensor(tok.encode(" " + word, add_special_tokens=False))
        expected = model.llm.get_input_embeddings()(word_ids).mean(0)
        torch.testing.assert_close(filled[4], expected)
        torch.testing.assert_close(filled[5:9], emb.expert.tokens[0])
    # the text between the placeholders is the prompt Anomaly-OV describes
    text = tok.decode(
        ids[0][where[3] + 1 : where[4]].tolist() + ids[0][where[4] + 1 : where[5]].tolist()
    )
    assert "with" in text and "suspicious feature:" in text


def test_regions_read_the_truth_where_oracle_and_the_own_mask_elsewhere(data):
    _, _, _, tok = data
    model = build_vmad(BOTH, tok, train_classes=["part"]).eval()
    from helpers.models import batch

    b = batch(model, tok)
    image = model.get_image_features(b["images_clip"])
    truth = b["masks"].float()
    args = (b["input_ids"], b["attention_mask"], b["images_clip"], b["images_sam"], image, None)
    from vmad_pipeline.models.extras import own_regions, training_regions

    own = own_regions(model, *args[:-1], None, tuple(truth.shape[-2:]))
    regions, keep = training_regions(model, b["masks"], torch.tensor([True, False]), own)
    assert own[1].max() > 0  # a drawn mask, not the empty region
    assert keep is None
    torch.testing.assert_close(regions[0], truth[0])
    torch.testing.assert_close(regions[1], own[1])


def test_a_checkpoint_keeps_the_frozen_expert_and_the_region_tokens(data, tmp_path):
    rows, roots, qa, tok = data
    from vmad_pipeline.models.checkpoint import load_checkpoint, save_checkpoint

    cfg = train_config(tmp_path, steps=2)
    trained = fit_vmad(make_job(rows, roots, qa, tok, cfg, BOTH))
    save_checkpoint(trained.model, tok, tmp_path / "model")
    loaded, tok2 = load_checkpoint(tmp_path / "model")
    ids, att = _prompt_ids(loaded, tok2, ["part", "bolt"])
    images = torch.rand(2, 3, 32, 32)
    outs = []
    for m in (trained.model.eval(), loaded):
        outs.append(
            m.predict(
                images_clip=images,
                images_sam=images,
                input_ids=ids,
                attention_mask=att,
                output_size=(16, 16),
                max_new_tokens=4,
            )
        )
    torch.testing.assert_close(outs[0].significance, outs[1].significance)
    torch.testing.assert_close(outs[0].mask_logits, outs[1].mask_logits)
    assert outs[0].answer_ids == outs[1].answer_ids


def test_both_stages_in_the_bf16_recipe(data, tmp_path):
    """The GPU precision recipe on the CPU: stage 1 under autocast with the expert in fp32;
    stage 2 stores the frozen expert in bf16 with the other frozen weights."""
    rows, roots, qa, tok = data
    cfg = train_config(tmp_path, steps=2, precision="bf16")
    stage1 = fit_expert(make_job(rows, roots, qa, tok, cfg, BOTH))
    assert all(torch.isfinite(torch.tensor(stage1["losses"])))
    assert all(v.dtype == torch.float32 for v in stage1["state"].values())
    model = fit_vmad(make_job(rows, roots, qa, tok, cfg, BOTH), expert=stage1).model
    assert {p.dtype for p in model.expert.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.region.parameters()} == {torch.float32}  # trained


def test_the_predictor_returns_the_experts_map_and_the_three_region_settings(data):
    _, _, _, tok = data
    from vmad_pipeline.inference.predictor import Predictor

    model = build_vmad(BOTH, tok, train_classes=["part"])
    predictor = Predictor(model, tok, max_new_tokens=3)
    images = (torch.rand(3, 3, 32, 32) * 255).to(torch.uint8)
    pred = predictor.predict(images, ["part"] * 3, output_size=16)
    assert pred.significance.shape == (3, 16, 16) and pred.expert_scores.shape == (3,)
    assert ((pred.significance >= 0) & (pred.significance <= 1)).all()
    truth = torch.zeros(3, 32, 32)
    truth[:, 4:12, 4:12] = 1
    settings = predictor.region_settings(images, ["part"] * 3, truth)
    assert set(settings) == {"no_region", "oracle_region"}
    assert all(len(s["answers"]) == 3 for s in settings.values())
    plain = Predictor(build_vmad(SMALL_CFG, tok, train_classes=["part"]), tok, max_new_tokens=3)
    assert plain.predict(images, ["part"] * 3, output_size=16).significance is None


def test_a_launched_rank_reads_stage_one_and_never_trains_its_own(data, tmp_path, monkeypatch):
    rows, roots, qa, tok = data
    cfg = train_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="--to-nodes train_expert"):
        fit_expert(make_job(rows, roots, qa, tok, cfg, BOTH), cached_only=True)
    assert not (tmp_path / "expert").exists() or not any((tmp_path / "expert").iterdir())
    first = fit_expert(make_job(rows, roots, qa, tok, cfg, BOTH))
    assert (
        fit_expert(make_job(rows, roots, qa, tok, cfg, BOTH), cached_only=True)["key"]
        == first["key"]
    )


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"expert": {"name": "anomaly"}}, "unknown expert 'anomaly'"),
        ({"expert": {"adverbs": [0.2, 0.6]}}, "highly >= moderately"),
        ({"expert": {"width": 30, "heads": 4}}, "must divide width"),
        ({"region_tokens": {"enabled": True, "source": "expert"}}, "needs train.model.expert"),
        ({"region_tokens": {"source": "sam"}}, "unknown source 'sam'"),
        ({"region_tokens": {"oracle_prob": 1.5}}, "oracle_prob"),
    ],
)
def test_bad_module_parameters_are_named(model, message):
    from vmad_pipeline.configs import ConfigError, parse_train_params

    with pytest.raises(ConfigError, match=message):
        parse_train_params({"model": model})


def test_modules_that_cannot_be_built_say_why(data):
    from vmad_pipeline.configs import ConfigError

    _, _, _, tok = data
    odd_pool = dataclasses.replace(BOTH, expert=dataclasses.replace(EXPERT, pool=3))
    with pytest.raises(ConfigError, match="pool: 3 does not divide the 4 x 4"):
        build_vmad(odd_pool, tok)
    far = dataclasses.replace(BOTH, expert=dataclasses.replace(EXPERT, levels=(0, 9)))
    with pytest.raises(ConfigError, match=r"levels: \[9\] out of range"):
        build_vmad(far, tok)
    from helpers.models import VMAD_CFG

    tiny = dataclasses.replace(VMAD_CFG, expert=EXPERT)
    with pytest.raises(ConfigError, match="tiny preset trains its vision tower"):
        build_vmad(tiny, tok)
    build_vmad(dataclasses.replace(tiny, frozen=("vision",)), tok)  # frozen: fine


def test_prediction_reads_the_own_mask_region_drawn_from_the_prompt_and_a_seg(data):
    """predict encodes SAM once for the own-mask region and the answer's mask: the same regions
    and masks as drawing each on its own."""
    _, _, _, tok = data
    from vmad_pipeline.models.extras import own_regions

    model = build_vmad(BOTH, tok, train_classes=["part"]).eval()
    ids, att = _prompt_ids(model, tok, ["part", "bolt"])
    images = torch.rand(2, 3, 32, 32)
    pred = model.predict(
        images_clip=images,
        images_sam=images,
        input_ids=ids,
        attention_mask=att,
        output_size=(16, 16),
        max_new_tokens=3,
    )
    seg = torch.full_like(ids[:, :1], model.seg_token_id)
    with torch.no_grad():
        image = model.get_image_features(images)
        alone = own_regions(
            model,
            torch.cat([ids, seg], 1),
            torch.cat([att, torch.ones_like(att[:, :1])], 1),
            images,
            images,
            image,
            None,
            (16, 16),
        )
        given = model.predict(
            images_clip=images,
            images_sam=images,
            input_ids=ids,
            attention_mask=att,
            output_size=(16, 16),
            max_new_tokens=3,
            region_masks=alone,
        )
    torch.testing.assert_close(pred.regions, alone)
    torch.testing.assert_close(pred.mask_logits, given.mask_logits)
    assert pred.answer_ids == given.answer_ids
