"""The image against itself (models/self_comparison.py): a patch the image repeats scores 0, a
patch it holds once scores its distance to the rest, never to itself or its own mirror image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vmad_pipeline.configs.base import ConfigError
from vmad_pipeline.configs.model import ModelConfig, SelfComparisonConfig, VisionConfig
from vmad_pipeline.models.references import FLIPS, side_by_side
from vmad_pipeline.models.self_comparison import (
    score_factors,
    self_distances,
    self_factors,
    self_maps,
)


def _views(features: torch.Tensor, n_views: int) -> torch.Tensor:
    """N x C x h x w -> its views side by side, each view the mirrored feature map (as a tower
    equivariant to flips would give)."""
    views = [features.flip(dims) if dims else features for dims in FLIPS[:n_views]]
    return side_by_side(torch.cat(views), n_views)


def _texture(h=8, w=8, c=4):
    return torch.ones(1, c, h, w)


@pytest.mark.parametrize("n_views", [1, 4])
def test_a_repeated_patch_scores_zero_and_a_unique_one_its_distance(n_views):
    feats = _texture()
    feats[0, :, 1, 2] = torch.tensor([1.0, 1.0, 1.0, 3.0])  # one patch unlike the rest
    d = self_distances(_views(feats, n_views), n_views, radius=1)
    assert d.shape == (1, 8, 8)
    # its own copy in the mirrored views shows the same place: left out, so not 0
    assert d[0, 1, 2] == pytest.approx(2.0)
    rest = torch.ones(8, 8, dtype=torch.bool)
    rest[1, 2] = False
    assert torch.all(d[0][rest] == 0)


def test_a_patchs_own_surroundings_are_left_out():
    # a defect two patches wide: each half matches the other unless radius >= 1 leaves it out
    feats = _texture()
    feats[0, :, 4, 4:6] = 5.0
    assert self_distances(feats, 1, radius=0)[0, 4, 4] == 0
    assert self_distances(feats, 1, radius=1)[0, 4, 4] > 0


def test_a_radius_that_leaves_a_patch_nothing_is_refused():
    with pytest.raises(ValueError, match="nothing to compare"):
        self_distances(_texture(4, 4), 1, radius=2)
    with pytest.raises(ValueError, match="views"):
        self_distances(torch.ones(1, 4, 4, 9), 4, radius=1)


def test_the_factors_keep_a_defect_whole_and_turn_down_what_repeats():
    class Tower(torch.nn.Module):  # the image itself as its only level (stride 1)
        def native_levels(self, images, upto=None):
            return [images][:upto]

    images = torch.full((1, 3, 16, 16), 0.5)
    images[0, 0, 3:5, 3:5] = 1.0  # red: another direction (features are unit length)
    cfg = SelfComparisonConfig(enabled=True, levels=(0,), stride=1, radius=2, scale=0.2)
    views = torch.cat([images.flip(d) if d else images for d in FLIPS])
    distances = self_maps(Tower(), views, cfg, 16)
    f = self_factors(distances, cfg)
    assert f.shape == (1, 16, 16) and f.min() >= 0 and f.max() <= 1
    assert f[0, 3:5, 3:5].min() > 0.5 and f[0, 12, 12] < 0.05
    no_flips = dataclasses.replace(cfg, flips=False)
    off = self_factors(self_maps(Tower(), images, no_flips, 16), no_flips)
    assert np.allclose(f[0, 12, 12], off[0, 12, 12], atol=0.05)


def test_only_an_image_with_a_place_unlike_the_rest_keeps_its_score():
    """The score's factor is 1 where some place's distance reaches the scale (a factor of 1 on
    the map), else repeated_score."""
    cfg = SelfComparisonConfig(enabled=True, scale=0.5, repeated_score=0.1)
    distances = np.zeros((3, 8, 8), np.float32)
    distances[0, 2, 2] = 0.5  # reaches it
    distances[1] = 0.49  # everywhere just below
    np.testing.assert_array_equal(score_factors(distances, cfg), [1.0, 0.1, 0.1])
    with pytest.raises(ConfigError, match="repeated_score"):
        SelfComparisonConfig(repeated_score=1.5)


def test_a_grid_too_small_for_the_radius_is_a_config_error():
    own = SelfComparisonConfig(enabled=True, stride=8, radius=2)
    with pytest.raises(ConfigError, match="self_comparison"):
        ModelConfig(vision=VisionConfig(image_size=32, patch_size=8), self_comparison=own)
    ModelConfig(vision=VisionConfig(image_size=48, patch_size=8), self_comparison=own)
    # off, or saved before it existed: no check
    ModelConfig(vision=VisionConfig(image_size=32, patch_size=8))
