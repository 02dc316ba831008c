"""LTC and the projector zoo: token counts, the switches, and point-to-region attention vs a loop."""

import math

import pytest
import torch

from vmad_pipeline.configs import PROJECTORS, ConfigError, LtcConfig, ProjectorConfig, from_dict
from vmad_pipeline.models.projectors import AvgPoolProjector, build_projector
from vmad_pipeline.models.projectors.ltc import LtcProjector, RegionAttention

C, D, G, R, B = 16, 24, 4, 2, 2
ALL_OFF = LtcConfig(
    local_context=False, spatial_downsampler=False, injection=False, multi_level=False
)
ROWS = {  # the Table IV ablation rows
    "baseline": ALL_OFF,
    "+ injection": LtcConfig(
        local_context=False, spatial_downsampler=False, injection=True, multi_level=False
    ),
    "+ multi-level": LtcConfig(
        local_context=False, spatial_downsampler=False, injection=True, levels=(1, 2)
    ),
    "ltc": LtcConfig(levels=(1, 2)),
}


def hidden_states(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, G * G, C, generator=g) for _ in range(3)]


def run(proj, hs):
    return proj(hs[-1], [hs[i] for i in proj.level_indices])


@torch.no_grad()
def test_region_attention_matches_a_loop():
    torch.manual_seed(0)
    attn = RegionAttention(dim=C, heads=4, ratio=R)
    coarse = torch.randn(B, (G // R) ** 2, C)
    fine = torch.randn(B, C, G, G)
    got = attn(coarse, fine)
    heads, dh = 4, C // 4
    for b in range(B):
        for cell in range((G // R) ** 2):
            i, j = divmod(cell, G // R)
            keys = torch.stack(
                [fine[b, :, i * R + u, j * R + v] for u in range(R) for v in range(R)]
            )  # (r^2, C): the fine tokens under coarse cell (i, j)
            q = attn.q(attn.norm_q(coarse[b, cell]))
            k, v = attn.k(keys), attn.v(keys)
            out = []
            for m in range(heads):
                sl = slice(m * dh, (m + 1) * dh)
                scores = [float(q[sl] @ k[t, sl]) / math.sqrt(dh) for t in range(R * R)]
                z = sum(math.exp(s) for s in scores)
                out.append(sum(math.exp(s) / z * v[t, sl] for t, s in enumerate(scores)))
            expected = attn.out(torch.cat(out))
            torch.testing.assert_close(got[b, cell], expected, atol=1e-5, rtol=1e-4)


def test_region_attention_only_sees_its_own_region():
    torch.manual_seed(0)
    attn = RegionAttention(dim=C, heads=2, ratio=R)
    coarse, fine = torch.randn(1, 4, C), torch.randn(1, C, G, G)
    before = attn(coarse, fine)
    fine2 = fine.clone()
    fine2[..., R:, R:] += 5.0  # only the region of coarse cell (1, 1) changes
    after = attn(coarse, fine2)
    torch.testing.assert_close(after[0, :3], before[0, :3])
    assert not torch.allclose(after[0, 3], before[0, 3])


def test_all_parts_off_is_average_pool_then_mlp():
    torch.manual_seed(0)
    ltc = LtcProjector(in_dim=C, out_dim=D, grid=G, pool=R, cfg=ALL_OFF)
    avg = AvgPoolProjector(in_dim=C, out_dim=D, grid=G, pool=R)
    avg.mlp.load_state_dict(ltc.readout.state_dict())
    hs = hidden_states()
    torch.testing.assert_close(run(ltc, hs), avg(hs[-1]))
    assert ltc.level_indices == ()


@pytest.mark.parametrize("row", list(ROWS))
def test_ablation_rows_shapes_and_gradients(row):
    torch.manual_seed(0)
    ltc = LtcProjector(in_dim=C, out_dim=D, grid=G, pool=R, cfg=ROWS[row])
    hs = [h.requires_grad_() for h in hidden_states()]
    out = run(ltc, hs)
    assert out.shape == (B, ltc.num_tokens, D) == (B, (G // R) ** 2, D)
    out.square().mean().backward()
    dead = [n for n, p in ltc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # The deformable attention starts with zero offset/weight matrices on purpose, so only
    # their biases see gradient on the first step: check that learning reaches everything else.
    assert all("deform.offsets.weight" in n or "deform.weights.weight" in n for n in dead), dead
    assert ltc.level_indices == (tuple(ROWS[row].levels) if ROWS[row].multi_level else ())
    if ROWS[row].multi_level:
        assert hs[1].grad is not None and hs[1].grad.abs().sum() > 0


def test_each_switch_changes_the_module():
    names = {
        row: {
            n.split(".")[0]
            for n, _ in LtcProjector(
                in_dim=C, out_dim=D, grid=G, pool=R, cfg=cfg
            ).named_parameters()
        }
        for row, cfg in ROWS.items()
    }
    assert names["baseline"] == {"readout"}
    assert names["+ injection"] == {"readout", "region"}
    assert names["+ multi-level"] == {"readout", "region", "integrate"}
    assert names["ltc"] == {"readout", "region", "integrate", "pos", "blocks", "pre", "post"}


def test_local_context_learner_is_local_and_global():
    """With the learner on, a change in one patch reaches tokens beyond its own pooled cell
    (self-attention); with every part off it stays in that cell."""
    torch.manual_seed(0)
    hs = hidden_states()
    hs2 = [h.clone() for h in hs]
    hs2[-1][:, 0] += 3.0  # patch (0, 0)
    for cfg, spreads in ((ALL_OFF, False), (LtcConfig(levels=(1, 2)), True)):
        ltc = LtcProjector(in_dim=C, out_dim=D, grid=G, pool=R, cfg=cfg)
        diff = (run(ltc, hs2) - run(ltc, hs)).abs().sum(-1)[0]  # (tokens,)
        assert diff[0] > 0
        assert bool((diff[1:] > 1e-6).any()) is spreads


def test_token_counts_at_real_dimensions():
    """C = 1024 CLIP width, d = 4096 LLM width, 24 x 24 grid (built on the meta device)."""
    with torch.device("meta"):
        counts = {
            name: build_projector(
                ProjectorConfig(name=name), in_dim=1024, out_dim=4096, grid=24
            ).num_tokens
            for name in PROJECTORS
        }
    assert counts == {"mlp": 576, "avgpool": 144, "resampler": 144, "ldpv2": 144, "ltc": 144}


def test_bad_ltc_settings_are_named():
    with pytest.raises(ConfigError, match="multi_level"):
        LtcProjector(in_dim=C, out_dim=D, grid=G, cfg=LtcConfig(injection=False, multi_level=True))
    with pytest.raises(ConfigError, match="ltc.heads"):
        LtcProjector(in_dim=C, out_dim=D, grid=G, cfg=LtcConfig(heads=3, levels=(1,)))
    with pytest.raises(ConfigError, match="projector.pool"):
        LtcProjector(in_dim=C, out_dim=D, grid=5, pool=2, cfg=ALL_OFF)
    with pytest.raises(ConfigError, match="train.model.projector.ltc.blocks"):
        from_dict(ProjectorConfig, {"name": "ltc", "ltc": {"blocks": 0}}, "train.model.projector")
    with pytest.raises(ConfigError, match="known: mlp, avgpool, resampler, ldpv2, ltc"):
        ProjectorConfig(name="qformer")
