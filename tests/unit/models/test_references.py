"""The comparison with normal references (models/references.py), against naive twins."""

from __future__ import annotations

import pytest
import torch

from vmad_pipeline.models.references import (
    NormalMemory,
    coreset,
    mutual_scores,
    nearest_distance,
    patch_features,
)


def _naive_nearest(queries, memory):
    return torch.tensor([min(float((q - m).norm()) for m in memory) for q in queries])


def test_nearest_distance_is_the_naive_minimum_in_any_block_size(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    queries, memory = torch.randn(37, 5, generator=gen), torch.randn(11, 5, generator=gen)
    monkeypatch.setattr("vmad_pipeline.models.references.CHUNK", 8)  # several blocks
    got = nearest_distance(queries, memory)
    assert torch.allclose(got, _naive_nearest(queries, memory), atol=1e-5)


def test_a_reference_identical_to_the_image_gives_a_zero_map_and_order_does_not_matter():
    gen = torch.Generator().manual_seed(1)
    refs = torch.randn(4, 6, 5, 5, generator=gen)
    image = refs[2:3].clone()
    memory = NormalMemory.build(refs, max_patches=10_000)
    assert memory.distances(image).abs().max() < 1e-6
    shuffled = NormalMemory.build(refs[[3, 1, 0, 2]], max_patches=10_000)
    other = torch.randn(2, 6, 5, 5, generator=gen)
    assert torch.allclose(memory.distances(other), shuffled.distances(other), atol=1e-5)
    assert memory.grid == (5, 5) and memory.n_images == 4


def test_the_coreset_is_greedy_k_centre_and_bounds_the_memory():
    gen = torch.Generator().manual_seed(2)
    points = torch.randn(40, 3, generator=gen)  # <= PRESAMPLE x 12: greedy over every row
    chosen = coreset(points, 12, seed=0)
    assert len(chosen) == 12 and len(set(chosen.tolist())) == 12
    # each next point was the farthest from those chosen before it (naive twin, no projection)
    for i in range(1, 12):
        before = points[chosen[:i]]
        far = _naive_nearest(points, before)
        assert far[chosen[i]] == pytest.approx(float(far.max()), abs=1e-5)
    assert torch.equal(coreset(points, 500), torch.arange(40))  # fewer rows than the cap
    many = torch.randn(1000, 3, generator=gen)  # past PRESAMPLE x 12: a seeded draw first
    picked = coreset(many, 12, seed=1)
    assert len(set(picked.tolist())) == 12 and torch.equal(picked, coreset(many, 12, seed=1))
    feats = torch.randn(3, 4, 10, 10, generator=gen)
    memory = NormalMemory.build(feats, max_patches=50)
    assert memory.patches.shape == (50, 4) and memory.owners.shape == (50,)
    for row, owner in zip(memory.patches, memory.owners, strict=True):  # where each came from
        assert (feats[owner].flatten(1).T == row).all(1).any()
    with pytest.raises(ValueError, match="at least one normal image"):
        NormalMemory.build(torch.zeros(0, 4, 2, 2), max_patches=5)


def test_leave_one_out_scores_each_reference_against_the_others():
    refs = torch.zeros(3, 2, 2, 2)
    refs[1, :, 0, 0] = torch.tensor([3.0, 4.0])  # one odd patch in reference 1
    loo = NormalMemory.build(refs, max_patches=100).leave_one_out(refs)
    assert loo[1, 0, 0] == pytest.approx(5.0, abs=1e-4) and loo[0].abs().max() < 1e-4
    with pytest.raises(ValueError, match="at least two references"):
        NormalMemory.build(refs[:1], max_patches=100).leave_one_out(refs[:1])


def test_patch_features_normalise_each_patch():
    class Levels(torch.nn.Module):
        def forward(self, x):
            return [x[:, :2, ::2, ::2] + 1.0, x[:, :3, ::4, ::4] + 2.0]

    images = torch.randint(0, 255, (3, 3, 16, 16), dtype=torch.uint8)
    feats = patch_features(images, Levels(), (0, 1), batch_size=2, normalise=True)
    assert feats.shape == (3, 5, 8, 8)
    assert torch.allclose(feats.norm(dim=1), torch.ones(3, 8, 8), atol=1e-5)


def test_mutual_scores_stay_where_they_were():
    feats = torch.zeros(5, 2, 4, 4)
    feats[2, :, 1, 3] = torch.tensor([3.0, 4.0])
    assert mutual_scores(feats, 1.0)[2, 1, 3].item() == pytest.approx(5.0, abs=1e-4)


def test_flipped_views_sit_side_by_side_and_belong_to_their_image():
    from vmad_pipeline.models.references import FLIPS, flipped, side_by_side

    images = torch.rand(2, 3, 5, 5)
    views = flipped(images)
    assert views.shape == (2 * len(FLIPS), 3, 5, 5)
    tiled = side_by_side(views, len(FLIPS))  # the images themselves as "features"
    assert tiled.shape == (2, 3, 5, 5 * len(FLIPS))
    torch.testing.assert_close(tiled[1, :, :, :5], images[1])
    torch.testing.assert_close(tiled[1, :, :, 5:10], images[1].flip(-1))
    torch.testing.assert_close(tiled[0, :, :, 15:], images[0].flip(-2, -1))
    memory = NormalMemory.build(tiled, max_patches=10_000)
    assert memory.owners.tolist() == [0] * 100 + [1] * 100  # every view is its image's
    # leave-one-out reads none of the image's own views: image 1 = image 0 mirrored scores 0
    mirrored = side_by_side(flipped(torch.stack([images[0], images[0].flip(-1)])), len(FLIPS))
    own = NormalMemory.build(mirrored, max_patches=10_000).leave_one_out(mirrored)
    assert own.abs().max() < 1e-5
    alone = NormalMemory.build(tiled, max_patches=10_000).leave_one_out(tiled)
    assert (alone.flatten(1).amax(1) > 0.1).all()  # its own views would have scored 0
    with pytest.raises(ValueError, match="not 4 views"):
        side_by_side(torch.rand(6, 3, 5, 5), 4)
