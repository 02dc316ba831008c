"""Images and masks as the models read them: the one place that decodes, resizes and prepares.

Training, evaluation, the predictor and the MLflow pyfunc all read pixels through this module, so
an image means the same thing everywhere: RGB, resized bilinearly to a square side, uint8; a mask
is binary (a pixel is positive when its value is > 0, metrics.md), resized with nearest neighbour.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

Source = str | Path | bytes  # a file path or the encoded bytes of an image file


def _open(source: Source) -> Image.Image:
    if isinstance(source, bytes | bytearray):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


def _name(source: Source) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes | bytearray) else str(source)


def load_rgb(source: Source, size: int) -> np.ndarray:
    """An image resized to size x size (bilinear), uint8 H x W x 3."""
    try:
        with _open(source) as im:
            return np.array(im.convert("RGB").resize((size, size), Image.BILINEAR))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image {_name(source)}: {err}") from err


def load_mask(path: str | Path | None, size: int) -> np.ndarray:
    """A binary mask (positive = value > 0) resized with nearest neighbour; zeros if no path."""
    if not path:
        return np.zeros((size, size), dtype=np.uint8)
    try:
        with Image.open(path) as im:
            return (np.asarray(im.convert("L").resize((size, size), Image.NEAREST)) > 0).astype(
                np.uint8
            )
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read mask {path}: {err}") from err


def load_batch(
    images: Sequence[Source],
    masks: Sequence[str | Path | None] | None,
    size: int,
    *,
    progress: bool = False,
    desc: str = "load images",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 3 x S x S uint8) and masks (N x S x S uint8, 0/1; zeros without ``masks``)."""
    n = len(images)
    out_images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    out_masks = torch.zeros((n, size, size), dtype=torch.uint8)
    for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
        out_images[i] = torch.from_numpy(load_rgb(images[i], size)).permute(2, 0, 1)
        if masks is not None:
            out_masks[i] = torch.from_numpy(load_mask(masks[i], size))
    return out_images, out_masks


def to_model_inputs(images: torch.Tensor, clip_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 B x 3 x S x S -> (CLIP input B x 3 x c x c, SAM input B x 3 x S x S), both in [0, 1]."""
    sam = images.float() / 255.0
    clip = F.interpolate(
        sam, (clip_size, clip_size), mode="bilinear", align_corners=False, antialias=True
    )
    return clip, sam
