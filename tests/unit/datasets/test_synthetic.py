"""The synthetic dataset: deterministic, MVTec-layout, exact masks, validated config, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vmad_pipeline.configs.ingest import SYNTHETIC_CLASSES, SYNTHETIC_DEFECTS, SyntheticConfig
from vmad_pipeline.datasets.synthetic import (
    AVAILABLE_CLASSES,
    AVAILABLE_DEFECTS,
    CLASS_FAMILIES,
    DEFECTS,
    class_defects,
    generate_synthetic,
    generation,
    write_tree,
)

SIZE = 48
TINY = dict(image_size=SIZE, n_train_good=2, n_test_good=1, n_test_defect=2, defects_per_class=2)


def test_same_seed_identical_and_different_seed_differs() -> None:
    config = SyntheticConfig(seed=3, classes=("washer", "carpet"), **TINY)
    first, second = (
        generate_synthetic(config, progress=False),
        generate_synthetic(config, progress=False),
    )
    assert first.keys() == second.keys()
    assert all(first[k].tobytes() == second[k].tobytes() for k in first)
    other = generate_synthetic(
        SyntheticConfig(seed=4, classes=("washer", "carpet"), **TINY), progress=False
    )
    common = first.keys() & other.keys()
    assert any(first[k].tobytes() != other[k].tobytes() for k in common)


def test_changing_one_class_counts_leaves_other_classes_unchanged() -> None:
    base = generate_synthetic(SyntheticConfig(classes=("screw", "wood"), **TINY), progress=False)
    more = generate_synthetic(
        SyntheticConfig(classes=("wood",), **{**TINY, "n_train_good": 3}), progress=False
    )
    assert np.array_equal(base["wood/train/good/001.png"], more["wood/train/good/001.png"])
    assert np.array_equal(base["wood/test/good/000.png"], more["wood/test/good/000.png"])


def test_layout_counts_and_masks() -> None:
    config = SyntheticConfig(classes=AVAILABLE_CLASSES, **TINY)
    images = generate_synthetic(config, progress=False)
    for cls in config.classes:
        defects = class_defects(config, cls)
        assert len(defects) == config.defects_per_class
        assert len([k for k in images if k.startswith(f"{cls}/train/good/")]) == config.n_train_good
        assert len([k for k in images if k.startswith(f"{cls}/test/good/")]) == config.n_test_good
        for defect in defects:
            for i in range(config.n_test_defect):
                image = images[f"{cls}/test/{defect}/{i:03d}.png"]
                mask = images[f"{cls}/ground_truth/{defect}/{i:03d}_mask.png"]
                assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
                assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
                assert set(np.unique(mask)) <= {0, 255}
                assert (mask > 0).sum() > 0, f"{cls}/{defect}/{i} has an empty mask"
    n_images = sum(1 for k in images if not k.endswith("_mask.png"))
    per_class = (
        config.n_train_good + config.n_test_good + config.defects_per_class * config.n_test_defect
    )
    assert n_images == per_class * len(config.classes)


@pytest.mark.parametrize(("scale", "contrast"), [(1.0, 1.0), (4.0, 2.0)])
@pytest.mark.parametrize("defect", AVAILABLE_DEFECTS)
def test_defect_changes_only_masked_pixels(defect: str, scale: float, contrast: float) -> None:
    # Each defect image is its normal twin plus the defect: every changed pixel lies in the mask, and the
    # defect is visible (a clear change somewhere in the mask).
    config = SyntheticConfig(
        image_size=64,
        defect_types=(defect,),
        defects_per_class=1,
        defect_scale=scale,
        defect_contrast=contrast,
    )
    for cls in ("washer", "woven_cloth", "screw", "pcb"):
        damaged, mask = generation._render(config, cls, "test", defect, 0)
        clean, same_mask = generation._render(config, cls, "test", defect, 0, apply_defect=False)
        assert np.array_equal(mask, same_mask)
        changed = np.abs(damaged.astype(int) - clean.astype(int)).max(axis=-1)
        assert not (changed[mask == 0] > 0).any(), (
            f"{defect} on {cls} changed pixels outside its mask"
        )
        assert changed[mask > 0].max() >= 40, f"{defect} on {cls} is barely visible"


def test_defects_on_objects_lie_inside_the_object() -> None:
    config = SyntheticConfig(image_size=64)
    for cls in ("washer", "capsule", "cable", "hex_nut"):
        for defect in AVAILABLE_DEFECTS:
            _, mask = generation._render(config, cls, "test", defect, 1)
            class_rng = np.random.default_rng(generation._key(config.seed, cls, "class"))
            appearance = generation._key(config.seed, cls, "test", defect, 1).spawn(3)[0]
            _, footprint, _ = generation._CLASSES[cls][1](
                64, class_rng, np.random.default_rng(appearance)
            )
            assert not ((mask > 0) & ~footprint).any(), f"{defect} on {cls} leaves the object"


def _mask_areas(**kwargs: float) -> list[float]:
    config = SyntheticConfig(
        classes=("washer", "wood", "screw", "pcb"),
        defects_per_class=8,
        n_test_defect=2,
        image_size=64,
        **kwargs,
    )
    return [
        float((generation._render(config, cls, "test", defect, i)[1] > 0).mean())
        for cls in config.classes
        for defect in class_defects(config, cls)
        for i in range(config.n_test_defect)
    ]


def test_defect_scale_grows_the_masks() -> None:
    base, big = np.mean(_mask_areas()), np.mean(_mask_areas(defect_scale=4.0))
    assert big >= 2.5 * base, f"mean mask area {base:.4f} at scale 1 vs {big:.4f} at scale 4"


def test_defect_contrast_strengthens_the_change_inside_the_same_mask() -> None:
    def change(contrast: float) -> tuple[float, np.ndarray]:
        config = SyntheticConfig(image_size=64, defect_contrast=contrast)
        damaged, mask = generation._render(config, "wood", "test", "stain", 0)
        clean, _ = generation._render(config, "wood", "test", "stain", 0, apply_defect=False)
        return float(np.abs(damaged.astype(int) - clean.astype(int))[mask > 0].mean()), mask

    (weak, m1), (normal, m2), (strong, m3) = change(0.5), change(1.0), change(2.0)
    assert np.array_equal(m1, m2) and np.array_equal(m2, m3)
    assert weak < normal < strong


def test_defaults_leave_defect_scale_and_contrast_at_one() -> None:
    config = SyntheticConfig(defect_scale=2, defect_contrast=1)
    assert (config.defect_scale, config.defect_contrast) == (2.0, 1.0)
    assert (SyntheticConfig().defect_scale, SyntheticConfig().defect_contrast) == (1.0, 1.0)


def test_registries_are_keyed_by_the_config_names() -> None:
    """The generator draws exactly the names SyntheticConfig accepts, in the same order."""
    assert AVAILABLE_CLASSES == tuple(CLASS_FAMILIES) == SYNTHETIC_CLASSES
    assert AVAILABLE_DEFECTS == tuple(DEFECTS) == SYNTHETIC_DEFECTS
    assert SyntheticConfig().classes == SYNTHETIC_CLASSES


def test_catalogue_is_broad_enough() -> None:
    assert len(AVAILABLE_CLASSES) >= 10
    assert len(set(CLASS_FAMILIES.values())) >= 4
    assert set(AVAILABLE_DEFECTS) >= {
        "scratch",
        "crack",
        "hole",
        "stain",
        "contamination",
        "missing_part",
        "deformation",
        "discoloration",
    }
    assert len(SyntheticConfig().classes) >= 12


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"classes": ("washer", "spaceship")}, "classes"),
        ({"defect_types": ("scratch", "rust_bloom")}, "defect_types"),
        ({"image_size": 16}, "image_size"),
        ({"n_train_good": 0}, "n_train_good"),
        ({"defect_types": ("scratch",), "defects_per_class": 2}, "defects_per_class"),
        ({"defect_scale": 0}, "defect_scale"),
        ({"defect_scale": 17}, "defect_scale"),
        ({"defect_scale": float("nan")}, "defect_scale"),
        ({"defect_scale": "big"}, "defect_scale"),
        ({"defect_contrast": 0.0}, "defect_contrast"),
        ({"defect_contrast": 3.5}, "defect_contrast"),
        ({"defect_contrast": -1}, "defect_contrast"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**kwargs)


def test_config_lists_become_tuples_and_unknown_names_are_listed() -> None:
    assert SyntheticConfig(classes=["tile"]).classes == ("tile",)
    with pytest.raises(ValueError, match="washer"):  # the valid names are listed
        SyntheticConfig(classes=["nope"])


def test_write_tree_writes_pngs(tmp_path: Path) -> None:
    images = generate_synthetic(SyntheticConfig(classes=("tile",), **TINY), progress=False)
    write_tree(images, tmp_path / "data")
    from PIL import Image

    for rel, array in images.items():
        assert np.array_equal(np.asarray(Image.open(tmp_path / "data" / rel)), array)


def test_write_tree_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "old.txt").write_text("previous tree")
    images = generate_synthetic(SyntheticConfig(classes=("tile",), **TINY), progress=False)
    real_write, calls = generation._write_png, []

    def failing_write(array: np.ndarray, path: Path) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_write(array, path)

    monkeypatch.setattr(generation, "_write_png", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_tree(images, root)
    assert sorted(p.name for p in root.iterdir()) == ["old.txt"]
    assert (root / "old.txt").read_text() == "previous tree"
    # No temporary directory is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]

    monkeypatch.setattr(generation, "_write_png", real_write)
    write_tree(images, root)  # a complete write replaces the old tree
    assert not (root / "old.txt").exists()
    assert len(list(root.rglob("*.png"))) == len(images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
