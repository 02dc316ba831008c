"""Single-scale deformable attention in plain PyTorch (``grid_sample``), no custom kernel.

Each query predicts, per head, K sampling offsets around its reference point and K
attention weights; values are read by bilinear sampling at those points and summed with
the weights (Zhu et al., Deformable DETR, ICLR 2021; VMAD Eq. 19-20). Used by LTC's
local-context learner.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DeformableAttention(nn.Module):
    def __init__(
        self, *, dim: int, heads: int = 4, points: int = 4, offset_scale: float = 1.0
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.points, self.offset_scale = dim, heads, points, offset_scale
        self.offsets = nn.Linear(dim, heads * points * 2)
        self.weights = nn.Linear(dim, heads * points)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self._reset()

    def _reset(self) -> None:
        # Start with the K points spread on a small ring around the reference (Deformable DETR).
        nn.init.zeros_(self.offsets.weight)
        angles = torch.arange(self.heads * self.points, dtype=torch.float32) * (
            2 * torch.pi / (self.heads * self.points)
        )
        ring = torch.stack([angles.cos(), angles.sin()], -1)  # (M*K, 2)
        ring = ring * torch.arange(1, self.points + 1).repeat(self.heads).unsqueeze(-1).float()
        with torch.no_grad():
            self.offsets.bias.copy_(ring.flatten())
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)

    def sampling(
        self, query: torch.Tensor, reference: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling locations B x Nq x M x K x 2 (x, y in [0, 1]) and weights B x Nq x M x K."""
        b, nq, _ = query.shape
        h, w = size
        offsets = self.offsets(query).view(b, nq, self.heads, self.points, 2) * self.offset_scale
        scale = torch.tensor([w, h], dtype=query.dtype, device=query.device)
        locations = reference[:, :, None, None, :] + offsets / scale  # offsets are in grid cells
        weights = self.weights(query).view(b, nq, self.heads, self.points).softmax(-1)
        return locations, weights

    def forward(
        self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor
    ) -> torch.Tensor:
        """query: B x Nq x C; reference: B x Nq x 2 (x, y in [0, 1]); value: B x C x H x W."""
        b, nq, c = query.shape
        h, w = value.shape[-2:]
        locations, weights = self.sampling(query, reference, (h, w))
        v = self.value(value.flatten(2).transpose(1, 2))  # (B, HW, C)
        v = v.transpose(1, 2).reshape(b * self.heads, c // self.heads, h, w)  # (B*M, C/M, H, W)
        grid = (
            (2 * locations - 1).permute(0, 2, 1, 3, 4).reshape(b * self.heads, nq, self.points, 2)
        )
        sampled = F.grid_sample(
            v, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (B*M, C/M, Nq, K)
        w_ = weights.permute(0, 2, 1, 3).reshape(b * self.heads, 1, nq, self.points)
        out = (sampled * w_).sum(-1)  # (B*M, C/M, Nq)
        out = out.view(b, c, nq).transpose(1, 2)  # (B, Nq, C)
        return self.out(out)
