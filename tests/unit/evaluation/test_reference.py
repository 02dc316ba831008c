"""The training-free, transductive reference: mutual scoring and its report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.configs.evaluate import ReferenceConfig, parse_evaluate_params
from vmad_pipeline.evaluation.reference import (
    PROTOCOL,
    mutual_scores,
    reference_maps,
    reference_report,
)


def _features(n: int, odd: dict[int, tuple[int, int]]) -> torch.Tensor:
    """n images of 4 x 4 identical patches (2 channels); ``odd``: image -> the patch made odd."""
    feats = torch.zeros(n, 2, 4, 4)
    for i, (y, x) in odd.items():
        feats[i, :, y, x] = torch.tensor([3.0, 4.0])  # distance 5 from every normal patch
    return feats


def test_an_odd_patch_scores_its_distance_to_the_nearest_normal_ones():
    scores = mutual_scores(_features(5, {2: (1, 3)}), fraction=1.0)
    assert scores[2, 1, 3].item() == pytest.approx(5.0)
    others = scores.clone()
    others[2, 1, 3] = 0
    assert others.abs().max().item() == 0.0  # every normal patch has an exact match


def test_interval_average_keeps_the_lowest_share_of_the_other_images():
    """Images 0 and 1 share an odd patch: against the 4 others, image 0's odd patch is 0 away
    from image 1's and 5 away from the 3 normal images. The lowest quarter (1 of 4) hides it,
    all four average it."""
    feats = _features(5, {0: (0, 0), 1: (2, 2)})
    assert mutual_scores(feats, fraction=0.25)[0, 0, 0].item() == pytest.approx(0.0)
    assert mutual_scores(feats, fraction=1.0)[0, 0, 0].item() == pytest.approx(15 / 4)


def test_one_image_alone_has_nothing_to_be_scored_against():
    assert torch.equal(mutual_scores(torch.rand(1, 3, 4, 4), 0.3), torch.zeros(1, 4, 4))


def test_classes_are_scored_apart():
    """A class's images are scored against their own class only: two classes, each internally
    uniform but different from the other, get all-zero maps."""

    class Backbone(torch.nn.Module):
        def forward(self, x):  # 4 levels; level l = the mean colour at grid 8 / 2^l
            return [F.adaptive_avg_pool2d(x, 8 // 2**level) for level in range(4)]

    import torch.nn.functional as F

    images = torch.cat(
        [torch.full((3, 3, 16, 16), 20, dtype=torch.uint8), torch.full((3, 3, 16, 16), 220)]
    ).to(torch.uint8)
    cfg = ReferenceConfig(levels=(0, 1), blur_sigma=1.0)
    maps = reference_maps(images, ["a"] * 3 + ["b"] * 3, cfg, 16, Backbone())
    assert maps.shape == (6, 16, 16) and np.abs(maps).max() == 0.0


def test_report_takes_the_map_maximum_per_image_and_the_class_mean():
    eval_set = pd.DataFrame({"category": ["a"] * 4 + ["b"] * 4, "label": [0, 0, 1, 1] * 2})
    maps = np.zeros((8, 4, 4), np.float32)
    masks = [np.zeros((4, 4), bool) for _ in range(8)]
    for i in (2, 3, 6, 7):
        masks[i][0, 0] = True
    maps[[2, 3], 0, 0] = 1.0  # class a: perfect
    maps[[4, 5], 3, 3] = 1.0  # class b: normal images score higher than anomalous ones
    report, flat = reference_report(eval_set, maps, masks, fpr_limit=0.3)
    assert report["per_class"]["a"]["image_auroc"] == 1.0
    assert report["per_class"]["b"]["image_auroc"] == 0.0
    assert report["mean"]["image_auroc"] == pytest.approx(0.5)
    assert report["protocol"] == PROTOCOL and "transductive" in PROTOCOL
    assert flat["a/image_auroc"] == 1.0 and "answer_accuracy" not in report["mean"]


def test_reference_settings_are_checked():
    with pytest.raises(ConfigError, match="reference.levels"):
        parse_evaluate_params({"reference": {"levels": [4]}})
    with pytest.raises(ConfigError, match="reference.fraction"):
        parse_evaluate_params({"reference": {"fraction": 0}})
