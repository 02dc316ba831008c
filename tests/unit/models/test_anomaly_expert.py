"""Anomaly-OV's anomaly expert against naive references: LTFM's significance map against a loop
over patches, the token selector's weighting and pooling, the Q-Former's shapes and where its
gradients go, the image score and the adverb."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vmad_pipeline.models.anomaly_expert import (
    LTFM,
    AnomalyExpert,
    ExpertShape,
    adverb,
    image_score,
    select_tokens,
)


@torch.no_grad()
def test_ltfm_matches_a_loop_over_patches():
    torch.manual_seed(0)
    ltfm = LTFM(8, temperature=0.07)
    tokens = torch.randn(2, 16, 8)
    got = ltfm(tokens)
    for b in range(2):
        context = sum(ltfm.select(tokens[b, n]) for n in range(16)) / 16
        abnormal = ltfm.mlp(torch.cat([ltfm.embeddings[0], context]))
        normal = ltfm.mlp(torch.cat([ltfm.embeddings[1], context]))
        for n in range(16):
            v = tokens[b, n]
            a = torch.dot(v, abnormal) / (v.norm() * abnormal.norm()) / 0.07
            z = torch.dot(v, normal) / (v.norm() * normal.norm()) / 0.07
            want = math.exp(a) / (math.exp(a) + math.exp(z))
            assert got[b, n].item() == pytest.approx(want, rel=1e-4)
    assert got.shape == (2, 16) and ((got > 0) & (got < 1)).all()


def test_the_selector_weighs_then_pools_on_the_grid():
    tokens = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    significance = torch.zeros(2, 16)
    significance[0, 0] = 1.0  # one suspicious token at the grid's top-left corner
    significance[1] = 0.5
    out = select_tokens(tokens, significance, pool=2)
    assert out.shape == (2, 4, 3)
    # image 0: only token 0 survives; its 2 x 2 window's mean is a quarter of it
    torch.testing.assert_close(out[0, 0], tokens[0, 0] / 4)
    assert out[0, 1:].abs().sum() == 0  # normal tokens went to zero
    # image 1: every window is half the mean of its 4 tokens (grid rows of 4)
    for q, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        window = [tokens[1, (r + i) * 4 + c + j] for i in range(2) for j in range(2)]
        torch.testing.assert_close(out[1, q], 0.5 * sum(window) / 4)
    with pytest.raises(ValueError, match="square grid"):
        select_tokens(torch.zeros(1, 12, 3), torch.zeros(1, 12), pool=2)


def test_the_expert_gives_maps_score_and_tokens_and_gradients_reach_what_it_uses():
    torch.manual_seed(0)
    shape = ExpertShape(level_widths=(6, 10, 12, 8), width=16, llm_width=24, pool=2, heads=2)
    expert = AnomalyExpert(shape)
    levels = tuple(torch.randn(3, 16, c) for c in shape.level_widths)
    out = expert(levels)
    assert out.level_maps.shape == (3, 4, 16) and out.significance.shape == (3, 16)
    assert out.tokens.shape == (3, 4, 24) and out.score.shape == (3,)
    torch.testing.assert_close(out.significance, out.level_maps.mean(1))
    out.tokens.sum().backward()
    for name, p in expert.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="takes 4 levels"):
        expert(levels[:3])


def test_the_score_is_the_mean_of_the_top_tenth_and_sets_the_adverb():
    m = torch.tensor([[0.9] + [0.1] * 19, [0.5] * 20])
    torch.testing.assert_close(image_score(m, 0.1), torch.tensor([0.5, 0.5]))  # top 2 of 20
    torch.testing.assert_close(image_score(m[:, :3], 0.1), torch.tensor([0.9, 0.5]))  # >= 1
    assert [adverb(s, (0.7, 0.4)) for s in (0.95, 0.7, 0.5, 0.1)] == [
        "highly",
        "highly",
        "moderately",
        "slightly",
    ]
    with pytest.raises(ValueError, match="high >= moderate"):
        adverb(0.5, (0.3, 0.6))


def test_a_frozen_expert_gets_no_gradient_but_its_tokens_still_carry_one_onward():
    """Stage 2 of the paper's recipe freezes the expert: nothing of it learns, and what reads its
    tokens still trains."""
    torch.manual_seed(0)
    expert = AnomalyExpert(ExpertShape(level_widths=(8, 8), width=8, llm_width=8))
    expert.requires_grad_(False)
    head = torch.nn.Linear(8, 1)
    out = expert((torch.randn(1, 16, 8), torch.randn(1, 16, 8)))
    F.softplus(head(out.tokens)).sum().backward()
    assert all(p.grad is None for p in expert.parameters())
    assert head.weight.grad is not None


def test_the_stage_one_loss_by_hand():
    from vmad_pipeline.losses.expert import expert_loss, token_targets

    masks = torch.zeros(1, 4, 4)
    masks[0, :2, :2] = 1  # the top-left token of a 2 x 2 grid
    masks[0, 2, 2] = 1  # a quarter of the bottom-right one
    torch.testing.assert_close(token_targets(masks, 4), torch.tensor([[1.0, 0.0, 0.0, 0.25]]))
    maps = torch.tensor([[[0.9, 0.2, 0.1, 0.5]]])  # one level
    score, label = torch.tensor([0.8]), torch.tensor([1])

    def bce(p, y):
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    tokens = (bce(0.9, 1) + bce(0.2, 0) + bce(0.1, 0) + bce(0.5, 0.25)) / 4
    want = tokens + 2.0 * bce(0.8, 1)
    got = expert_loss(maps, score, masks, label, image_weight=2.0)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_the_expert_builds_at_the_real_presets_shapes_on_the_meta_device():
    """LLaVA-1.5's CLIP ViT-L/14-336 (4 of its layers, 576 patch tokens of 1,024) into a 4,096
    wide LLM: 144 suspicious tokens (24 x 24 pooled 2 x 2), in bf16, without allocating."""
    shape = ExpertShape(level_widths=(1024,) * 4, width=1024, llm_width=4096, pool=2, heads=16)
    with torch.device("meta"):
        expert = AnomalyExpert(shape).to(torch.bfloat16)
        levels = tuple(torch.empty(2, 576, 1024, dtype=torch.bfloat16) for _ in range(4))
        out = expert(levels)
    assert out.tokens.shape == (2, 144, 4096) and out.tokens.dtype == torch.bfloat16
    assert out.level_maps.shape == (2, 4, 576) and out.score.shape == (2,)
    params = sum(p.numel() for p in expert.parameters())
    assert 40e6 < params < 60e6  # 50M: about 0.7 % of a 7B LLM


def _real_preset(**model):
    import yaml
    from helpers import REPO

    from vmad_pipeline.configs import parse_train_params

    path = REPO / "conf" / "presets" / "llava7b_sam_h" / "parameters_train.yml"
    params = yaml.safe_load(path.read_text())["train"]
    for key, value in model.items():
        params["model"][key] = {**params["model"][key], **value}
    return parse_train_params(params, {})[1]


def test_the_real_preset_builds_both_modules_at_its_shapes():
    """The shipped real preset with the expert and the region tokens on: the expert on the
    meta-device CLIP ViT-L/14-336 (layers 12, 16, 22, 23), the adverb on a 4,096-wide embedding
    table, in bf16; the region tokens at their real widths on a 24 x 24 feature map."""
    from transformers import CLIPVisionModel

    from vmad_pipeline.models.build import build_expert
    from vmad_pipeline.models.extras import adverb_embeddings
    from vmad_pipeline.models.region_tokens import RegionTokens
    from vmad_pipeline.models.vision import VisionTower, clip_config

    cfg = _real_preset(expert={"name": "anomaly_ov"}, region_tokens={"enabled": True})
    with torch.device("meta"):
        tower = VisionTower(clip=CLIPVisionModel(clip_config(cfg.vision)), select_layer=-2)
        expert = build_expert(cfg, tower).to(torch.bfloat16)
        levels = tuple(torch.empty(1, 576, 1024, dtype=torch.bfloat16) for _ in range(25))
        from vmad_pipeline.models.extras import expert_levels

        out = expert(expert_levels(levels, cfg.expert.levels))
        embed = torch.nn.Embedding(32001, 4096, dtype=torch.bfloat16)
        adverb = adverb_embeddings(
            embed,
            [torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4])],
            out.score,
            (0.7, 0.4),
        )
    assert expert.num_tokens(tower.grid) == 144 and out.tokens.shape == (1, 144, 4096)
    assert adverb.shape == (1, 1, 4096) and adverb.dtype == torch.bfloat16
    region = RegionTokens(1024, 4096, grid=cfg.region_tokens.grid).to(torch.bfloat16)
    features = torch.randn(1, 1024, 24, 24, dtype=torch.bfloat16)
    mask = torch.zeros(1, 336, 336)
    mask[0, 100:200, 50:120] = 1
    tokens = region(features, mask)
    assert tokens.shape == (1, 4, 4096) and tokens.dtype == torch.bfloat16
    assert sum(p.numel() for p in region.parameters()) < 5e6  # a small projection, LLM unchanged
