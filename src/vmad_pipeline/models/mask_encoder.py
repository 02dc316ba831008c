"""The `small` preset's image encoder for SAM's prompt encoder and mask decoder: frozen,
ImageNet-trained EfficientNet-Lite0 features and a trainable neck, in place of SAM's ViT (as
EfficientViT-SAM and MobileSAM replace SAM's heavy encoder with a light one, Zhang et al. 2023;
Cai et al. 2024). It also hands DSSL its visual teacher: the frozen features themselves."""

from __future__ import annotations

import torch
from torch import nn

from vmad_pipeline.models.efficientnet import to_grid
from vmad_pipeline.models.projectors.ltc import LayerNorm2d


class EfficientNetMaskEncoder(nn.Module):
    """images in [0, 1] -> B x d_sam x grid x grid, the image embedding SAM's decoder reads.

    Neck (FPN-like, Lin et al. 2017): a 1 x 1 lateral convolution per feature level to d_sam,
    each resized to the grid and summed, then SAM's own neck shape (3 x 3 conv, LayerNorm2d,
    3 x 3 conv, LayerNorm2d). ``teacher`` levels (frozen) at the grid, concatenated, are DSSL's
    visual teacher."""

    takes_unit_range = True  # VmadModel gives it [0, 1] images, not SAM-normalised ones

    def __init__(
        self,
        *,
        backbone: nn.Module,
        channels: tuple[int, ...],
        img_size: int,
        grid: int,
        out_chans: int,
        teacher_levels: tuple[int, ...] = (1, 2),
    ) -> None:
        super().__init__()
        self.backbone, self.img_size, self.grid = backbone, img_size, grid
        self.teacher_levels = teacher_levels
        self.teacher_dim = sum(channels[i] for i in teacher_levels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_chans, 1) for c in channels)
        self.neck = nn.Sequential(
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
            nn.GELU(),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embedding B x d_sam x g x g, DSSL's frozen teacher B x teacher_dim x g x g)."""
        levels = [to_grid(x, self.grid) for x in self.backbone(images)]
        fused = sum(lat(x) for lat, x in zip(self.lateral, levels, strict=True))
        teacher = torch.cat([levels[i] for i in self.teacher_levels], 1)
        return self.neck(fused), teacher

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)[0]
