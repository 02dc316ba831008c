"""A small conditional inpainting U-Net that paints a defect of a given type inside a mask.

Input: the image with the mask region blanked (3), the mask (1) and a noise plane (1); the defect
type is a learned embedding that modulates every block (FiLM: Perez et al., AAAI 2018). The
output is composited, ``image * (1 - m) + out * m``, so outside the mask the image is exactly
the input. The U-Net (Ronneberger et al., MICCAI 2015) with a masked-image input is the
inpainting generator's classic form (Pathak et al., CVPR 2016); it trains in minutes on two CPU
cores, which a diffusion model (IAD-Unify's generator) does not.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FilmBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and SiLU; the type embedding scales and shifts the
    normalised features of the second (FiLM)."""

    def __init__(self, *, cin: int, cout: int, embed_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.film = nn.Linear(embed_dim, 2 * cout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.norm1(self.conv1(x)))  # (B, C, H, W)
        gamma, beta = self.film(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        return F.silu(self.norm2(self.conv2(x)) * (1 + gamma) + beta)


class DefectGenerator(nn.Module):
    """``forward(image, mask, types, noise)`` -> the composited image (B x 3 x H x W in [0, 1]);
    H and W must be multiples of ``2 ** depth``."""

    def __init__(self, *, types: int, width: int = 32, depth: int = 3, embed_dim: int = 32) -> None:
        super().__init__()
        if types < 1:
            raise ValueError("the generator needs at least one defect type")
        self.types, self.depth = types, depth
        self.embed = nn.Embedding(types, embed_dim)
        chans = [width * 2**i for i in range(depth + 1)]  # e.g. 32, 64, 128, 256
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        cin = 5
        for c in chans[:-1]:
            self.down.append(FilmBlock(cin=cin, cout=c, embed_dim=embed_dim))
            self.pool.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
            cin = c
        self.mid = FilmBlock(cin=cin, cout=chans[-1], embed_dim=embed_dim)
        self.up = nn.ModuleList()
        for c_skip, c_below in zip(chans[-2::-1], chans[:0:-1], strict=True):
            self.up.append(FilmBlock(cin=c_skip + c_below, cout=c_skip, embed_dim=embed_dim))
        self.head = nn.Conv2d(chans[0], 3, 1)

    def paint(
        self, image: torch.Tensor, mask: torch.Tensor, types: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The raw painting (B x 3 x H x W in [0, 1]) before compositing. image: B x 3 x H x W in
        [0, 1]; mask: B x 1 x H x W in {0, 1}; types: B (long); noise: B x 1 x H x W."""
        emb = self.embed(types)  # (B, E)
        x = torch.cat([image * (1 - mask), mask, noise], dim=1)  # (B, 5, H, W)
        skips = []
        for block, pool in zip(self.down, self.pool, strict=True):
            x = block(x, emb)
            skips.append(x)
            x = pool(x)
        x = self.mid(x, emb)
        for block, skip in zip(self.up, reversed(skips), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([skip, x], dim=1), emb)
        return torch.sigmoid(self.head(x))

    def forward(
        self, image: torch.Tensor, mask: torch.Tensor, types: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The image with a defect of ``types`` painted inside ``mask`` and untouched outside."""
        return composite(image, self.paint(image, mask, types, noise), mask)


def composite(image: torch.Tensor, painted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``image`` outside ``mask``, ``painted`` inside (a hard mask: exactly ``image`` outside)."""
    return torch.where(mask > 0.5, painted, image)


__all__ = ["DefectGenerator", "FilmBlock", "composite"]
