"""Images as they are (issue 11): 16-bit images are scaled to 8 bits, not saturated, wherever
pixels are read (training, evaluation, predictor and pyfunc all read through images.py); masks
are positive where the raw value is > 0 at any bit depth; images without an agreed scale are
refused with a clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vmad_pipeline.images import as_rgb8, load_batch, load_mask, load_rgb

SIZE = 16


def sixteen_bit_ramp(path) -> np.ndarray:
    """A 16-bit grayscale PNG whose rows go from 0 to 65535 (PIL mode I;16)."""
    values = np.linspace(0, 65535, SIZE * SIZE).astype(np.uint16).reshape(SIZE, SIZE)
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really read back as a 16-bit image
    return values


def test_16_bit_images_are_scaled_not_saturated(tmp_path):
    values = sixteen_bit_ramp(tmp_path / "ramp.png")
    rgb = load_rgb(tmp_path / "ramp.png", SIZE)
    expected = np.rint(values / 65535 * 255)
    assert rgb.dtype == np.uint8 and rgb.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(rgb[..., 0], expected, atol=1)
    assert (rgb == 255).mean() < 0.02  # PIL's convert("RGB") clips 99.6 % of them to 255


def test_16_bit_bytes_read_the_same_as_files(tmp_path):
    sixteen_bit_ramp(tmp_path / "ramp.png")
    data = (tmp_path / "ramp.png").read_bytes()
    from_bytes, _ = load_batch([data], None, SIZE)  # as the pyfunc reads base64 images
    np.testing.assert_array_equal(from_bytes[0].permute(1, 2, 0).numpy(), load_rgb(data, SIZE))
    np.testing.assert_array_equal(load_rgb(data, SIZE), load_rgb(tmp_path / "ramp.png", SIZE))


def test_16_bit_masks_are_positive_where_the_raw_value_is(tmp_path):
    mask = np.zeros((SIZE, SIZE), np.uint16)
    mask[:4, :4] = 1  # 1 of 65535: a 16-bit mask's positive value
    mask[8:, 8:] = 40000
    Image.fromarray(mask).save(tmp_path / "mask.png")
    np.testing.assert_array_equal(
        load_mask(tmp_path / "mask.png", SIZE), (mask > 0).astype(np.uint8)
    )


def test_float_images_are_refused_naming_the_file(tmp_path):
    Image.fromarray(np.full((SIZE, SIZE), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float\.tif.*floating-point"):
        load_rgb(tmp_path / "float.tif", SIZE)


def test_32_bit_values_beyond_16_bits_are_refused():
    im = Image.fromarray(np.full((SIZE, SIZE), 100000, np.int32), "I")
    with pytest.raises(ValueError, match="not a 16-bit image"):
        as_rgb8(im)


def test_8_bit_modes_convert_as_pil_does():
    rgba = Image.fromarray(np.full((SIZE, SIZE, 4), 200, np.uint8), "RGBA")
    np.testing.assert_array_equal(np.asarray(as_rgb8(rgba)), np.asarray(rgba.convert("RGB")))
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    assert load_rgb(buffer.getvalue(), 4).shape == (4, 4, 3)
