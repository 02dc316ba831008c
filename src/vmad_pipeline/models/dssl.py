"""Defect-Sensitive Structure Learning (method.md section 5; VMAD Deng et al. Eq. 8-18).

Random boxes are ROI-pooled on the SAM image embedding (visual side, the teacher) and on the
LLM's visual tokens (the student). Each box gets a {normal, abnormal} distribution from its
similarities to per-class memory queues of normal / abnormal image features; the LLM side
is pulled toward the visual side by PBSD (``losses/pbsd.py``). The LLM-side bank holds
semantic tokens: learnable context shifted by a Meta-Net (CoCoOp, Zhou et al. CVPR 2022),
plus state words, plus the projected visual global feature (Eq. 14). Training-time only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from vmad_pipeline.configs import DsslConfig
from vmad_pipeline.losses.pbsd import normal_log_prob, patch_bce_loss, pbsd_loss


def sample_boxes(
    batch: int,
    n: int,
    image_size: int,
    box_min: float,
    box_max: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """B x n x 4 float xyxy pixel boxes inside the image; width and height drawn independently,
    uniform in [box_min, box_max] * image_size; top-left uniform over the positions that fit."""
    shape = (batch, n, 2)
    side = box_min + (box_max - box_min) * torch.rand(shape, generator=generator, device=device)
    side = side * image_size  # (B, n, 2) as (w, h)
    lo = torch.rand(shape, generator=generator, device=device) * (image_size - side)  # (B, n, 2)
    return torch.cat([lo, lo + side], -1)  # (B, n, 4)


def box_pixel_bounds(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Integer pixel bounds B x n x 4 (x0, y0, x1, y1), half-open: a box covers the pixels with
    floor(x1) <= x < ceil(x2) and floor(y1) <= y < ceil(y2), clipped to the image."""
    lo = boxes[..., :2].floor()  # (B, n, 2)
    hi = boxes[..., 2:].ceil()  # (B, n, 2)
    limit = torch.tensor([width, height], device=boxes.device, dtype=boxes.dtype)
    bounds = torch.cat([lo.clamp(min=0).minimum(limit), hi.clamp(min=0).minimum(limit)], -1)
    return bounds.long()  # (B, n, 4)


def box_abnormal(masks: torch.Tensor, boxes: torch.Tensor, fraction: float) -> torch.Tensor:
    """B x n bool: share of the box's pixels (``box_pixel_bounds``) positive in masks (B x H x W,
    0/1) is > fraction. An empty box counts as normal. Summed with an integral image."""
    b, h, w = masks.shape
    integral = torch.zeros(b, h + 1, w + 1, dtype=torch.long, device=masks.device)
    integral[:, 1:, 1:] = (masks > 0).long().cumsum(1).cumsum(2)  # (B, H+1, W+1)
    flat = integral.flatten(1)  # (B, (H+1)(W+1))
    x0, y0, x1, y1 = box_pixel_bounds(boxes, h, w).unbind(-1)  # each (B, n)

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return flat.gather(1, y * (w + 1) + x)  # (B, n)

    positive = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)  # (B, n)
    area = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)  # (B, n)
    return positive > fraction * area


def roi_features(
    feature_map: torch.Tensor, boxes: torch.Tensor, image_size: int, roi_size: int
) -> torch.Tensor:
    """Mean of the roi_size x roi_size ROI-align cells: feature_map B x C x h x w (covering the
    square image), boxes B x n x 4 xyxy in image pixels -> B x n x C."""
    b, n, _ = boxes.shape
    pooled = roi_align(
        feature_map,
        list(boxes.to(feature_map.dtype)),
        output_size=roi_size,
        spatial_scale=feature_map.shape[-1] / image_size,
        sampling_ratio=2,
        aligned=True,
    )  # (B*n, C, r, r)
    return pooled.mean((2, 3)).view(b, n, -1)  # (B, n, C)


class MemoryQueue(nn.Module):
    """Per class and image state (0 normal, 1 abnormal) ring buffer of the K latest features.

    Buffers (saved in state_dict): feats n_classes x 2 x K x D, ptr and count n_classes x 2.
    """

    def __init__(self, *, n_classes: int, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("feats", torch.zeros(n_classes, 2, size, dim))
        self.register_buffer("ptr", torch.zeros(n_classes, 2, dtype=torch.long))
        self.register_buffer("count", torch.zeros(n_classes, 2, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, feats: torch.Tensor, class_idx: torch.Tensor, state: torch.Tensor) -> None:
        """feats B x D, class_idx B (-1 skipped), state B; the oldest entry is overwritten."""
        n_classes, _, size, _ = self.feats.shape
        ptr, count = self.ptr.tolist(), self.count.tolist()
        for i, (c, s) in enumerate(zip(class_idx.tolist(), state.tolist(), strict=True)):
            if c < 0:
                continue
            if c >= n_classes:
                raise ValueError(f"class index {c} out of range for {n_classes} classes")
            self.feats[c, s, ptr[c][s]] = feats[i].detach().to(self.feats.dtype)
            ptr[c][s] = (ptr[c][s] + 1) % size
            count[c][s] = min(count[c][s] + 1, size)
        self.ptr.copy_(torch.tensor(ptr, dtype=torch.long).view_as(self.ptr))
        self.count.copy_(torch.tensor(count, dtype=torch.long).view_as(self.count))

    def bank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Filled entries: feats M x D, class M (long), state M (long)."""
        n_classes, _, size, _ = self.feats.shape
        filled = torch.arange(size, device=self.feats.device) < self.count[..., None]  # (C, 2, K)
        grid = torch.meshgrid(
            torch.arange(n_classes, device=self.feats.device),
            torch.arange(2, device=self.feats.device),
            torch.arange(size, device=self.feats.device),
            indexing="ij",
        )
        return self.feats[filled], grid[0][filled], grid[1][filled]


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` (B x ...) of every rank, concatenated in rank order (B may differ between ranks: a
    skipped sample); gradients flow back to each rank's own rows. ``t`` itself outside
    torch.distributed or with one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    sizes = [
        torch.zeros((), dtype=torch.long, device=t.device) for _ in range(dist.get_world_size())
    ]
    dist.all_gather(sizes, torch.tensor(len(t), device=t.device))
    most = int(max(sizes))
    padded = torch.cat([t, t.new_zeros((most - len(t), *t.shape[1:]))])
    parts = all_gather(padded) if t.requires_grad else _gather_plain(padded)
    return torch.cat([p[: int(n)] for p, n in zip(parts, sizes, strict=True)])


def _gather_plain(t: torch.Tensor) -> list[torch.Tensor]:
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return parts


@dataclass
class DsslOutput:
    pbsd: torch.Tensor  # scalar, KL(p_v || p_t) per box, mean
    patch_bce: torch.Tensor  # scalar, auxiliary box-label BCE of the visual side
    p_v: torch.Tensor  # (B, n) visual p(normal | box); 1 where not valid
    p_t: torch.Tensor  # (B, n) LLM-side p(normal | box); 1 where not valid
    box_abnormal: torch.Tensor  # (B, n) bool box labels
    valid: torch.Tensor  # (B,) bool, the image's class has normal and abnormal bank entries


class Dssl(nn.Module):
    def __init__(self, *, cfg: DsslConfig, d_sam: int, d_llm: int, d_clip: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_classes = len(cfg.classes)
        p = cfg.proj_dim
        self.head_v = nn.Sequential(nn.Linear(d_sam, d_sam), nn.ReLU(), nn.Linear(d_sam, p))
        self.head_t = nn.Sequential(nn.Linear(d_llm, d_llm), nn.ReLU(), nn.Linear(d_llm, d_llm))
        self.ctx = nn.Parameter(torch.randn(cfg.n_ctx, d_llm) * 0.02)
        self.meta_net = nn.Sequential(
            nn.Linear(d_clip, cfg.meta_hidden), nn.ReLU(), nn.Linear(cfg.meta_hidden, d_llm)
        )
        self.g_to_llm = nn.Linear(p, d_llm)
        self.queue_v = MemoryQueue(n_classes=self.n_classes, size=cfg.queue_size, dim=p)
        self.queue_t = MemoryQueue(n_classes=self.n_classes, size=cfg.queue_size, dim=d_llm)

    def semantic_tokens(
        self,
        g: torch.Tensor,
        clip_global: torch.Tensor,
        state: torch.Tensor,
        state_words: torch.Tensor,
    ) -> torch.Tensor:
        """Eq. 14: normalize(mean_k(ctx_k + meta_net(clip)) + state_words[state] + g_to_llm(g)).

        g B x proj_dim (detached here), clip_global B x d_clip, state B (long),
        state_words 2 x d_llm -> B x d_llm.
        """
        shift = self.meta_net(clip_global)  # (B, d_llm)
        text = (self.ctx[None] + shift[:, None]).mean(1) + state_words[state]  # (B, d_llm)
        return F.normalize(text + self.g_to_llm(g.detach()), dim=-1)  # (B, d_llm)

    def forward(
        self,
        *,
        sam_embedding: torch.Tensor,
        llm_visual: torch.Tensor,
        clip_global: torch.Tensor,
        state_words: torch.Tensor,
        masks: torch.Tensor,
        class_idx: torch.Tensor,
        generator: torch.Generator | None = None,
        boxes: torch.Tensor | None = None,
    ) -> DsslOutput:
        """sam_embedding B x d_sam x h x w (detached: teacher); llm_visual B x d_llm x s x s (the
        LLM's last hidden layer at the image tokens); clip_global B x d_clip; state_words
        2 x d_llm (normal, abnormal); masks B x H x W (H = W = image size); class_idx B (long, an
        index outside the training classes counts as unknown); boxes B x n x 4 (xyxy pixels; drawn
        from ``generator`` when None). Enqueues only in training mode.

        Under torch.distributed, the bank's own entries and the enqueued features are the whole
        global batch (gathered over ranks in rank order, with gradients for the own entries), so
        N processes learn as one with their batches together (MoCo's gather, He et al. 2020)."""
        cfg, size = self.cfg, masks.shape[-1]
        known = (class_idx >= 0) & (class_idx < self.n_classes)
        class_idx = torch.where(known, class_idx, -1)  # (B,)
        state = (masks > 0).flatten(1).any(1).long()  # (B,)
        if boxes is None:
            device = generator.device if generator is not None else masks.device
            boxes = sample_boxes(
                masks.shape[0], cfg.boxes, size, cfg.box_min, cfg.box_max, generator, device
            )
        boxes = boxes.to(masks.device, torch.float32)  # (B, n, 4)
        labels = box_abnormal(masks, boxes, cfg.abnormal_fraction)  # (B, n)

        sam = sam_embedding.detach()
        z = F.normalize(self.head_v(roi_features(sam, boxes, size, cfg.roi_size)), dim=-1)
        g = F.normalize(self.head_v(sam.mean((2, 3))), dim=-1).detach()  # (B, proj_dim)
        u = F.normalize(self.head_t(roi_features(llm_visual, boxes, size, cfg.roi_size)), dim=-1)
        s = self.semantic_tokens(g, clip_global, state, state_words)  # (B, d_llm)

        all_g, all_s = gather_rows(g), gather_rows(s)  # (B_global, .): the global batch
        all_class, all_state = gather_rows(class_idx), gather_rows(state)

        def against(queue: MemoryQueue, own: torch.Tensor, queries: torch.Tensor):
            feats, cls, st = queue.bank()
            bank = torch.cat([feats.to(own.dtype), own])  # (M + B_global, D)
            return normal_log_prob(
                queries,
                bank,
                torch.cat([cls, all_class]),
                torch.cat([st, all_state]),
                class_idx,
                cfg.tau,
            )

        lv_n, lv_a, valid_v = against(self.queue_v, all_g, z)  # (B, n), (B, n), (B,)
        lt_n, lt_a, valid_t = against(self.queue_t, all_s, u)  # (B, n), (B, n), (B,)
        valid = valid_v & valid_t
        out = DsslOutput(
            pbsd=pbsd_loss(lv_n, lv_a, lt_n, lt_a, valid),
            patch_bce=patch_bce_loss(lv_n, lv_a, labels, valid),
            p_v=lv_n.exp().detach(),
            p_t=lt_n.exp(),
            box_abnormal=labels,
            valid=valid,
        )
        if self.training:
            self.queue_v.enqueue(all_g, all_class, all_state)
            self.queue_t.enqueue(all_s, all_class, all_state)
        return out
