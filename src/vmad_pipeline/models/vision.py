"""Vision towers: CLIP (transformers), returning per-layer patch features without CLS, and the
`small` preset's frozen EfficientNet-Lite0 with one adaptor per feature level."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from vmad_pipeline.configs import VisionConfig
from vmad_pipeline.models.efficientnet import to_grid


def clip_config(cfg: VisionConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.hidden_size,
    )


class VisionTower(nn.Module):
    """Wraps ``CLIPVisionModel``; keeps every hidden state because LTC reads several layers."""

    # CLIP's normalisation constants (OpenAI CLIP preprocessing).
    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, *, clip: CLIPVisionModel, select_layer: int = -2) -> None:
        super().__init__()
        self.clip = clip
        self.select_layer = select_layer
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    @property
    def hidden_size(self) -> int:
        return self.clip.config.hidden_size

    @property
    def grid(self) -> int:
        return self.clip.config.image_size // self.clip.config.patch_size

    @property
    def num_hidden_states(self) -> int:
        return self.clip.config.num_hidden_layers + 1  # embeddings + every layer

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """images: B x 3 x S x S in [0, 1] -> every hidden state, each B x N x C (CLS dropped)."""
        pixels = (images - self.mean) / self.std
        out = self.clip(pixel_values=pixels, output_hidden_states=True)
        return tuple(h[:, 1:] for h in out.hidden_states)

    def select(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return hidden_states[self.select_layer]

    def encode(self, images: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple]:
        """(the hidden states, the levels an anomaly expert reads): CLIP's hidden states both."""
        hidden = self(images)
        return hidden, hidden

    @torch.no_grad()
    def native_levels(
        self, images: torch.Tensor, frozen: tuple | None = None, upto: int | None = None
    ) -> list:
        """The feature maps the reference comparison reads, no gradient: every hidden state as
        B x C x grid x grid (``frozen``: :meth:`encode`'s second output, when computed; ``upto``:
        the first that many only, though CLIP runs every layer)."""
        hidden = frozen if frozen is not None else self(images)
        b, g = len(images), self.grid
        return [h.detach().transpose(1, 2).reshape(b, -1, g, g) for h in hidden[:upto]]

    @property
    def expert_widths(self) -> tuple[int, ...]:
        return (self.hidden_size,) * self.num_hidden_states


def build_vision_tower(cfg: VisionConfig) -> VisionTower:
    return VisionTower(clip=CLIPVisionModel(clip_config(cfg)), select_layer=cfg.select_layer)


class EfficientNetTower(nn.Module):
    """The `small` preset's vision tower: a frozen, ImageNet-trained EfficientNet-Lite0; each of
    its feature levels (strides 4, 8, 16, 32) is average-pooled or upsampled to one grid and
    projected to one width by a trainable 1 x 1 adaptor, so the projectors and LTC read them as
    they read CLIP's hidden states (LTC's multi-level keys and values become real multi-scale
    features)."""

    def __init__(
        self,
        *,
        backbone: nn.Module,
        channels: tuple[int, ...],
        grid: int,
        width: int,
        select_layer: int = 2,
    ) -> None:
        super().__init__()
        self.backbone, self.grid, self.width = backbone, grid, width
        self.select_layer = select_layer
        self.adaptors = nn.ModuleList(nn.Linear(c, width) for c in channels)

    @property
    def hidden_size(self) -> int:
        return self.width

    @property
    def num_hidden_states(self) -> int:
        return len(self.adaptors)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """images: B x 3 x S x S in [0, 1] -> one B x grid^2 x width tensor per level."""
        return self.encode(images)[0]

    def encode(self, images: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple]:
        """(the adapted levels, the backbone's own levels on the grid, B x grid^2 x C_i): an
        anomaly expert trained before the adaptors reads the frozen ones."""
        raw = [
            to_grid(level, self.grid).flatten(2).transpose(1, 2) for level in self.backbone(images)
        ]
        adapted = tuple(a(x) for a, x in zip(self.adaptors, raw, strict=True))
        return adapted, tuple(raw)

    def native_levels(
        self, images: torch.Tensor, frozen: tuple | None = None, upto: int | None = None
    ) -> list:
        """The backbone's own levels at their own resolutions (strides 4, 8, 16, 32), no
        gradient: what the reference comparison reads (``upto``: the first that many, the deeper
        blocks not run). The backbone keeps its last call's features, so right after
        :meth:`encode` of the same tensor this costs nothing."""
        return self.backbone(images, upto)

    @property
    def expert_widths(self) -> tuple[int, ...]:
        return tuple(a.in_features for a in self.adaptors)

    def select(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return hidden_states[self.select_layer]
