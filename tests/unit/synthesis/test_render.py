"""A generated tree is an MVTec-layout source: the ingest reader takes it, with the right labels,
defect types and masks."""

from __future__ import annotations

import numpy as np
import torch

from vmad_pipeline.configs.generate import GenerateConfig
from vmad_pipeline.datasets.mvtec import read_mvtec
from vmad_pipeline.datasets.synthetic import write_tree
from vmad_pipeline.images import load_mask
from vmad_pipeline.synthesis.generator import DefectGenerator
from vmad_pipeline.synthesis.render import Painter, Pool, generate_tree, move_mask

SIZE = 32


def _pool() -> Pool:
    gen = torch.Generator().manual_seed(0)
    normals = torch.randint(0, 256, (6, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    masks = torch.zeros((3, SIZE, SIZE), dtype=torch.uint8)
    masks[0, 4:10, 4:20] = 1
    masks[1, 10:20, 10:14] = 1
    masks[2, 20:28, 5:9] = 1
    return Pool(
        normals=normals,
        normal_classes=["bolt"] * 3 + ["nut"] * 3,
        normal_paths=[f"x/{i}.png" for i in range(6)],
        masks=masks,
        mask_classes=["bolt", "bolt", "nut"],
        mask_types=["crack", "hole", "crack"],
    )


def _painter() -> Painter:
    torch.manual_seed(0)
    return Painter(DefectGenerator(types=2, width=4, depth=2, embed_dim=8), ("crack", "hole"))


def test_the_ingest_reader_takes_a_generated_tree(tmp_path):
    pool = _pool()
    tree, index = generate_tree(pool, _painter(), GenerateConfig(per_type=2, max_shift=0.1))
    write_tree(tree, tmp_path / "gen")
    manifest = read_mvtec(tmp_path / "gen", source="generated", progress=False)
    assert sorted(set(manifest["category"])) == ["bolt", "nut"]
    anomalous = manifest[manifest["label"] == 1]
    assert len(anomalous) == len(index) == 2 * 2 * 2  # classes x types x per_type
    assert sorted(set(anomalous["defect_name"])) == ["crack", "hole"]
    normal = manifest[manifest["label"] == 0]
    assert len(normal) == 6 and set(normal["mask_path"]) == {""}
    assert set(normal[normal["split"] == "test"]["image_path"]) == set(index["base"])
    for row in index.itertuples():
        read = manifest[manifest["image_path"] == row.image].iloc[0]
        assert read["mask_path"] == row.mask and read["defect_name"] == row.defect_type
        mask = load_mask(tmp_path / "gen" / row.mask, SIZE)
        assert np.array_equal(mask, tree[row.mask] > 0) and mask.any()
        # outside the mask the image is its base, bit for bit
        outside = mask == 0
        assert np.array_equal(tree[row.image][outside], tree[row.base][outside])


def test_real_masks_come_from_their_type_and_are_seeded():
    pool, painter = _pool(), _painter()
    cfg = GenerateConfig(per_type=3, max_shift=0.0, seed=4)
    tree, index = generate_tree(pool, painter, cfg)
    holes = index[index["defect_type"] == "hole"]
    # the only hole mask (max_shift 0: unmoved) is used on both classes
    for path in holes["mask"]:
        assert np.array_equal(tree[path] > 0, pool.masks[1].numpy() > 0)
    again, _ = generate_tree(pool, painter, cfg)
    assert all(np.array_equal(tree[k], again[k]) for k in tree)
    blob_tree, _ = generate_tree(pool, painter, GenerateConfig(per_type=3, masks="blob", seed=4))
    assert not np.array_equal(blob_tree[holes["mask"].iloc[0]], tree[holes["mask"].iloc[0]])


def test_move_mask_keeps_the_mask_whole_and_inside():
    mask = torch.zeros((SIZE, SIZE), dtype=torch.uint8)
    mask[0:5, 25:32] = 1  # at the border: a move may not wrap it around
    for seed in range(20):
        moved = move_mask(mask, 0.3, torch.Generator().manual_seed(seed))
        assert int(moved.sum()) == int(mask.sum())
        ys, xs = torch.nonzero(moved, as_tuple=True)
        assert int(xs.max() - xs.min()) == 6 and int(ys.max() - ys.min()) == 4
