"""SAM visual branch (segment-anything's modeling classes) and the [SEG]-prompted decode."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn

from vmad_pipeline.configs import SamConfig

# SAM's pixel statistics (0-255 scale), as in segment_anything/build_sam.py.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def build_sam(cfg: SamConfig, *, image_encoder: nn.Module | None = None) -> Sam:
    """A randomly initialised SAM of the given size, assembled like ``build_sam._build_sam``;
    ``image_encoder`` replaces its ViT (it needs ``img_size`` and gives cfg.prompt_dim x grid x
    grid embeddings)."""
    encoder = image_encoder or ImageEncoderViT(
        depth=cfg.depth,
        embed_dim=cfg.embed_dim,
        img_size=cfg.image_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=cfg.num_heads,
        patch_size=cfg.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=cfg.global_attn_indexes,
        window_size=cfg.window_size,
        out_chans=cfg.prompt_dim,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=cfg.prompt_dim,
        image_embedding_size=(cfg.grid, cfg.grid),
        input_image_size=(cfg.image_size, cfg.image_size),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=cfg.decoder_depth,
            embedding_dim=cfg.prompt_dim,
            mlp_dim=cfg.decoder_mlp_dim,
            num_heads=cfg.decoder_heads,
        ),
        transformer_dim=cfg.prompt_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256,  # a constant in segment_anything/build_sam.py, for every size
    )
    return Sam(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=decoder,
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


class MaskCue(NamedTuple):
    """What the reference cue (``models/reference_cue.py``) gives SAM's mask decoder, per row:
    ``dense`` (B x d x h x w) added to its dense prompt, ``logits`` (B x 1 x 4h x 4w) added to its
    low-resolution mask logits."""

    dense: torch.Tensor | None
    logits: torch.Tensor | None

    def take(self, rows) -> MaskCue:
        """The cue of some rows (an index or a mask)."""
        return MaskCue(*(None if t is None else t[rows] for t in self))


def sam_preprocess(sam: Sam, images: torch.Tensor) -> torch.Tensor:
    """images: B x 3 x H x W in [0, 1], longest side already resized to the encoder size.

    Normalises with SAM's statistics and pads bottom-right to a square (``Sam.preprocess``).
    """
    return torch.stack([sam.preprocess(img * 255.0) for img in images])


def batched_masks(
    decoder: MaskDecoder,
    embeddings: torch.Tensor,
    prompt_encoder: PromptEncoder,
    prompts,
    dense: torch.Tensor | None = None,
) -> torch.Tensor:
    """The first (single-mask) output of SAM's mask decoder for B images with one sparse prompt
    each, in one batch: B x 1 x 4h x 4w low-resolution logits.

    ``MaskDecoder.predict_masks`` repeats each image's embedding once per prompt (one image,
    many prompts); with one prompt per image that would mean one decoder call per image. This is
    the same computation (its steps, with its own modules) with the batch taken as it is, checked
    against the decoder's own per-image call in tests/unit/models/test_vmad.py. Dense prompt =
    the no-mask embedding, plus ``dense`` (B x d x h x w: the reference cue's) when given."""
    b, _, h, w = embeddings.shape
    src = embeddings + prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)  # (B, d, h, w)
    if dense is not None:
        src = src + dense.to(src.dtype)
    pos = prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], 0)
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), prompts.view(b, 1, -1)], 1)
    hs, src = decoder.transformer(src, pos, tokens)
    mask_token = hs[:, 1]  # the first mask token: multimask_output=False
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, -1, h, w))
    hyper = decoder.output_hypernetworks_mlps[0](mask_token)  # (B, C')
    _, c, uh, uw = upscaled.shape
    return (hyper.unsqueeze(1) @ upscaled.view(b, c, uh * uw)).view(b, 1, uh, uw)


def decode_masks(
    sam: Sam,
    image_embeddings: torch.Tensor,
    prompts: torch.Tensor,
    *,
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    cue: MaskCue | None = None,
) -> torch.Tensor:
    """Masks from one sparse prompt per image (embedding-as-mask, LISA).

    image_embeddings: B x d_sam x h x w; prompts: B x d_sam (the projected [SEG] state).
    Dense prompt = SAM's no-mask embedding; ``cue``: the reference cue's dense prompt and
    low-resolution logits, added. Returns mask logits B x H_out x W_out.
    """
    dense = None if cue is None else cue.dense
    low = batched_masks(sam.mask_decoder, image_embeddings, sam.prompt_encoder, prompts, dense)
    if cue is not None and cue.logits is not None:
        low = low + cue.logits.to(low.dtype)
    masks = F.interpolate(
        low, (sam.image_encoder.img_size,) * 2, mode="bilinear", align_corners=False
    )
    masks = masks[..., : input_size[0], : input_size[1]]
    masks = F.interpolate(masks, output_size, mode="bilinear", align_corners=False)
    return masks[:, 0]  # (B, H_out, W_out)
