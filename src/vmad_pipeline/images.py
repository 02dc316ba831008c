"""Images and masks as the models read them: the one place that decodes, resizes and prepares.

Training, evaluation, the predictor and the MLflow pyfunc all read pixels through this module, so
an image means the same thing everywhere: RGB, resized bilinearly to a square side, uint8; a mask
is binary (a pixel is positive when its raw value is > 0, metrics.md), resized with nearest
neighbour. Images of more than 8 bits are scaled to 8 bits (:func:`as_rgb8`), never clipped.
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
# What counts as an image file everywhere (ingest's readers, predict's inputs): one list.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _open(source: Source) -> Image.Image:
    if isinstance(source, bytes | bytearray):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


def _name(source: Source) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes | bytearray) else str(source)


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def as_rgb8(im: Image.Image) -> Image.Image:
    """The image as 8-bit RGB. 16-bit images (PIL modes ``I;16*``, and ``I`` when its values lie
    in 0..65535, as 16-bit PNGs open) are scaled by 255 / 65535; PIL's own ``convert("RGB")``
    would clip every value above 255 (a 16-bit image turns almost white). 8-bit modes (L, P,
    RGBA, CMYK, ...) convert as PIL converts them. Float images (``F``) and 32-bit integers
    beyond 16 bits have no agreed scale: ValueError."""
    if im.mode in SIXTEEN_BIT_MODES or im.mode == "I":
        values = np.asarray(im)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"{im.mode} image with values in [{values.min()}, {values.max()}]: not a 16-bit "
                "image; convert it to 8 or 16 bits first"
            )
        scaled = np.rint(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    if im.mode == "F":
        raise ValueError("floating-point image (mode F): no agreed scale to 8 bits")
    return im.convert("RGB")


def check_pixels(source: Source, max_pixels: int, limit: str = "the limit") -> tuple[int, int]:
    """(width, height) from the image's header, nothing decoded; a ValueError when it is not an
    image, is empty, or has more than ``max_pixels`` pixels (``limit`` names the limit in the
    message)."""
    try:
        with _open(source) as im:
            w, h = im.size
    except Image.DecompressionBombError as err:  # PIL's own, far larger limit
        raise ValueError(f"image: over {limit} of {max_pixels} pixels") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(
            "image: not an image file PIL can read (PNG, JPEG, BMP, TIFF, ...)"
        ) from err
    if w < 1 or h < 1:
        raise ValueError(f"image: empty ({w} x {h} pixels)")
    if w * h > max_pixels:
        raise ValueError(f"image: {w} x {h} pixels is over {limit} of {max_pixels}")
    return w, h


def read_rgb(source: Source) -> np.ndarray:
    """An image at its own size, uint8 H x W x 3 (:func:`as_rgb8`); a file that cannot be read
    is a ValueError naming it."""
    try:
        with _open(source) as im:
            return np.array(as_rgb8(im))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image {_name(source)}: {err}") from err


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 H x W x 3 resized to size x size (bilinear)."""
    return np.array(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def load_rgb(source: Source, size: int) -> np.ndarray:
    """An image resized to size x size (bilinear), uint8 H x W x 3 (:func:`as_rgb8` first)."""
    return resize_rgb(read_rgb(source), size)


def read_mask_values(path: str | Path) -> np.ndarray:
    """A mask file's raw values as stored (H x W, or H x W x C; any dtype), its alpha channel
    dropped (a mask drawn on a transparent layer is opaque everywhere). Never through PIL's
    ``convert``, which turns a faint colour (blue 3 -> grey 0) into background."""
    with Image.open(path) as im:
        values = np.asarray(im)
        alpha = im.mode in ("LA", "La", "PA", "RGBA", "RGBa")
    return values[..., :-1] if alpha else values


def mask_positive(values: np.ndarray) -> np.ndarray:
    """H x W booleans, the one mask rule (metrics.md): raw value > 0 on any channel."""
    out = np.asarray(values) > 0
    return out.any(axis=2) if out.ndim == 3 else out


def load_mask(path: str | Path | None, size: int) -> np.ndarray:
    """A binary mask (:func:`mask_positive` of :func:`read_mask_values`) resized with nearest
    neighbour; zeros if no path."""
    if not path:
        return np.zeros((size, size), dtype=np.uint8)
    try:
        positive = mask_positive(read_mask_values(path))
        binary = Image.fromarray(positive.astype(np.uint8) * 255, "L")
        return (np.asarray(binary.resize((size, size), Image.NEAREST)) > 0).astype(np.uint8)
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
    """uint8 B x 3 x S x S -> (CLIP input B x 3 x c x c, SAM input B x 3 x S x S), both in [0, 1];
    when c = S, one tensor serves both (a backbone shared by the two branches reads it once)."""
    sam = images.float() / 255.0
    if clip_size == sam.shape[-1]:
        return sam, sam
    clip = F.interpolate(
        sam, (clip_size, clip_size), mode="bilinear", align_corners=False, antialias=True
    )
    return clip, sam
