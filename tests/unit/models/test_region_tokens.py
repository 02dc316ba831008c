"""IAD-Unify's region tokens against hand-computed ROI means and boxes."""

from __future__ import annotations

import torch

from vmad_pipeline.models.region_tokens import RegionTokens, mask_boxes


def test_boxes_and_areas_of_masks_by_hand():
    masks = torch.zeros(2, 8, 8)
    masks[0, 2:4, 4:8] = 1.0  # rows 2-3, columns 4-7
    boxes, area = mask_boxes(masks)
    torch.testing.assert_close(boxes[0], torch.tensor([0.5, 0.25, 1.0, 0.5]))
    torch.testing.assert_close(boxes[1], torch.tensor([0.0, 0.0, 1.0, 1.0]))  # empty: all
    torch.testing.assert_close(area, torch.tensor([8 / 64, 0.0]))


def test_region_features_are_the_mean_of_the_cells_under_the_box():
    """A box over feature cells 1-2 x 1-2 of a 4 x 4 grid, pooled to one token: exactly the
    mean of those 4 cells (roi_align's samples fall on the cell centres)."""
    torch.manual_seed(0)
    features = torch.randn(1, 3, 4, 4)
    masks = torch.zeros(1, 16, 16)
    masks[0, 4:12, 4:12] = 1.0  # image pixels 4-11 = feature cells 1-2
    tokens = RegionTokens(feature_width=3, llm_width=5, grid=1)
    pooled = tokens.pooled(features, mask_boxes(masks)[0])
    torch.testing.assert_close(pooled[0, 0], features[0, :, 1:3, 1:3].mean((1, 2)))
    out = tokens(features, masks)
    geometry = torch.tensor([0.25, 0.25, 0.75, 0.75, 0.25])
    want = tokens.features(pooled[0, 0]) + tokens.geometry(geometry)
    torch.testing.assert_close(out[0, 0], want)
    assert out.shape == (1, 1, 5)


def test_a_grid_of_cells_gives_one_token_each_and_only_the_projections_train():
    torch.manual_seed(0)
    tokens = RegionTokens(feature_width=6, llm_width=8, grid=2)
    features = torch.randn(2, 6, 8, 8, requires_grad=True)
    masks = torch.zeros(2, 32, 32)
    masks[0, :16, :16] = 1.0
    out = tokens(features, masks)
    assert out.shape == (2, 4, 8) and tokens.num_tokens == 4
    # the top-left quarter's 2 x 2 cells are the quarter's 4 x 4 feature cells pooled in 2 x 2
    pooled = tokens.pooled(features, mask_boxes(masks)[0])
    torch.testing.assert_close(pooled[0, 0], features[0, :, 0:2, 0:2].mean((1, 2)))
    out.sum().backward()
    assert {n for n, p in tokens.named_parameters() if p.grad is not None} == {
        "features.weight",
        "features.bias",
        "geometry.weight",
        "geometry.bias",
    }
