"""SAM visual branch (segment-anything's modeling classes) and the [SEG]-prompted decode."""

from __future__ import annotations

from functools import partial

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


def build_sam(cfg: SamConfig) -> Sam:
    """A randomly initialised SAM of the given size, assembled like ``build_sam._build_sam``."""
    encoder = ImageEncoderViT(
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


def sam_preprocess(sam: Sam, images: torch.Tensor) -> torch.Tensor:
    """images: B x 3 x H x W in [0, 1], longest side already resized to the encoder size.

    Normalises with SAM's statistics and pads bottom-right to a square (``Sam.preprocess``).
    """
    return torch.stack([sam.preprocess(img * 255.0) for img in images])


def decode_masks(
    sam: Sam,
    image_embeddings: torch.Tensor,
    prompts: torch.Tensor,
    *,
    input_size: tuple[int, int],
    output_size: tuple[int, int],
) -> torch.Tensor:
    """Masks from one sparse prompt per image (embedding-as-mask, LISA).

    image_embeddings: B x d_sam x h x w; prompts: B x d_sam (the projected [SEG] state).
    Dense prompt = SAM's no-mask embedding. Returns mask logits B x H_out x W_out.
    """
    dense_pe = sam.prompt_encoder.get_dense_pe()  # (1, d_sam, h, w)
    h, w = image_embeddings.shape[-2:]
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)
    logits = []
    # The decoder repeats image_embeddings per prompt token batch, so it takes one image at a time.
    for emb, prompt in zip(image_embeddings, prompts, strict=True):
        low_res, _iou = sam.mask_decoder(
            image_embeddings=emb.unsqueeze(0),
            image_pe=dense_pe,
            sparse_prompt_embeddings=prompt.view(1, 1, -1),
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )  # (1, 1, 4h, 4w)
        logits.append(low_res)
    low = torch.cat(logits)  # (B, 1, 4h, 4w)
    masks = F.interpolate(
        low, (sam.image_encoder.img_size,) * 2, mode="bilinear", align_corners=False
    )
    masks = masks[..., : input_size[0], : input_size[1]]
    masks = F.interpolate(masks, output_size, mode="bilinear", align_corners=False)
    return masks[:, 0]  # (B, H_out, W_out)
