"""Deformable attention against a slow reference that samples every point by hand."""

import math

import pytest
import torch

from vmad_pipeline.models.deformable_attention import DeformableAttention


def bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img: C x H x W; (x, y) in [0, 1] image coordinates, align_corners=False, zero padding."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= xi < w and 0 <= yi < h:
                out += wx * wy * img[:, yi, xi]
    return out


def reference(attn: DeformableAttention, query, ref, value):
    b, nq, c = query.shape
    h, w = value.shape[-2:]
    loc, weights = attn.sampling(query, ref, (h, w))
    v = attn.value(value.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
    d = c // attn.heads
    out = torch.zeros(b, nq, c)
    for bi in range(b):
        for q in range(nq):
            for m in range(attn.heads):
                acc = torch.zeros(d)
                for k in range(attn.points):
                    x, y = loc[bi, q, m, k].tolist()
                    acc += weights[bi, q, m, k] * bilinear(v[bi, m * d : (m + 1) * d], x, y)
                out[bi, q, m * d : (m + 1) * d] = acc
    return attn.out(out)


@pytest.mark.parametrize("heads,points", [(1, 1), (2, 3), (4, 4)])
def test_matches_slow_reference(heads, points):
    torch.manual_seed(heads * 10 + points)
    attn = DeformableAttention(dim=8, heads=heads, points=points, offset_scale=2.0)
    with torch.no_grad():  # random offsets and weights, so points land off the grid and outside
        for p in attn.parameters():
            p.normal_(0, 0.5)
    query, ref, value = torch.randn(2, 5, 8), torch.rand(2, 5, 2), torch.randn(2, 8, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(
            attn(query, ref, value), reference(attn, query, ref, value), atol=1e-5, rtol=1e-4
        )


def test_gradients_reach_offsets_and_values():
    attn = DeformableAttention(dim=8, heads=2, points=2)
    value = torch.randn(1, 8, 4, 4, requires_grad=True)
    attn(torch.randn(1, 3, 8), torch.rand(1, 3, 2), value).sum().backward()
    assert value.grad is not None and attn.offsets.weight.grad.abs().sum() > 0


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match="divisible"):
        DeformableAttention(dim=6, heads=4)
