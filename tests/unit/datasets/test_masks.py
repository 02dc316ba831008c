"""Mask rules: the bounding box of the pixels > 0, COCO's uncompressed RLE, polygon rasterisation;
each checked on arrays small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from vmad_pipeline.datasets.listing import Shapes
from vmad_pipeline.datasets.masks import mask_bbox, mask_to_rle, rasterise, rle_to_mask


def test_mask_bbox_reference() -> None:
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:9] = 255
    mask[7, 1] = 1
    assert mask_bbox(mask) == [1, 2, 8, 6]
    assert mask_bbox(np.zeros((4, 4), np.uint8)) == []


def test_rle_hand_checked_2x3() -> None:
    mask = np.array([[0, 1, 1], [0, 0, 1]], dtype=np.uint8)
    # column-major: col0 (0,0) col1 (1,0) col2 (1,1) -> 0 0 1 0 1 1
    assert mask_to_rle(mask) == {"counts": [2, 1, 1, 2], "size": [2, 3]}
    starts_positive = np.array([[1, 0, 0], [1, 0, 1]], dtype=np.uint8)  # 1 1 0 0 0 1
    assert mask_to_rle(starts_positive)["counts"] == [0, 2, 3, 1]
    np.testing.assert_array_equal(rle_to_mask(mask_to_rle(starts_positive)), starts_positive)


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trip_random(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 40, 2)
    mask = rng.random((h, w)) < rng.random()
    rle = mask_to_rle(mask)
    assert sum(rle["counts"]) == h * w
    np.testing.assert_array_equal(rle_to_mask(rle), mask.astype(np.uint8))


def test_rasterise_fills_polygons_with_their_outline_and_adds_rles() -> None:
    shapes = Shapes(
        polygons=((2, 1, 5, 1, 5, 3, 2, 3), (0, 5, 1, 5)),  # a 4x3 rectangle; a segment
        width=8,
        height=6,
        rles=((4, 1, 43),),  # column-major pixel 4: row 4, column 0
    )
    expected = np.zeros((6, 8), np.uint8)
    expected[1:4, 2:6] = 255  # rows 1..3, columns 2..5, edges included
    expected[5, 0:2] = 255  # the segment's two pixels
    expected[4, 0] = 255
    np.testing.assert_array_equal(rasterise(shapes), expected)
