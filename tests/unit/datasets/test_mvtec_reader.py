"""The MVTec AD layout reader, on tiny trees written in the real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vmad_pipeline.configs.ingest import SyntheticConfig
from vmad_pipeline.datasets.manifest import MANIFEST_COLUMNS, IngestError, file_sha256
from vmad_pipeline.datasets.masks import mask_bbox
from vmad_pipeline.datasets.mvtec import read_mvtec
from vmad_pipeline.datasets.synthetic import class_defects, generate_synthetic, write_tree

CONFIG = SyntheticConfig(
    classes=("washer", "carpet"),
    image_size=40,
    n_train_good=2,
    n_test_good=1,
    n_test_defect=1,
    defects_per_class=2,
)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    images = generate_synthetic(CONFIG, progress=False)
    write_tree(images, tmp_path / "mvtec")
    return tmp_path / "mvtec", images


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_reads_rows_labels_bbox_sizes(tree: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, images = tree
    manifest = read_mvtec(root, source="toy", progress=False)
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert len(manifest) == 2 * (2 + 1 + 2 * 1)
    assert manifest.equals(read_mvtec(root, source="toy", progress=False))  # deterministic
    assert list(manifest["category"]) == sorted(manifest["category"])
    for row in manifest.itertuples():
        assert not Path(row.image_path).is_absolute() and (root / row.image_path).is_file()
        assert row.source == "toy" and row.view == ""
        assert (row.width, row.height) == (40, 40)
        assert row.sha256 == file_sha256(root / row.image_path)
        anomalous = "/test/" in row.image_path and "/good/" not in row.image_path
        assert row.label == int(anomalous)
        if anomalous:
            assert row.mask_path == row.image_path.replace("/test/", "/ground_truth/").replace(
                ".png", "_mask.png"
            )
            assert row.defect_name == row.image_path.split("/")[2]
            assert row.bbox == mask_bbox(images[row.mask_path]) and len(row.bbox) == 4
        else:
            assert (row.mask_path, row.defect_name, list(row.bbox)) == ("", "", [])
    assert set(manifest.loc[manifest.label == 1, "defect_name"]) == set(
        class_defects(CONFIG, "washer")
    ) | set(class_defects(CONFIG, "carpet"))


def test_category_filter(tree: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = tree
    assert set(read_mvtec(root, categories=["carpet"], progress=False)["category"]) == {"carpet"}
    with pytest.raises(IngestError, match="washer"):  # lists the available ones
        read_mvtec(root, categories=["bottle"], progress=False)


def test_corrupt_image_is_named(tree: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = tree
    (root / "washer/train/good/001.png").write_bytes(b"this is not a png")
    with pytest.raises(IngestError, match="washer/train/good/001.png"):
        read_mvtec(root, progress=False)


def test_missing_mask_names_the_image(tree: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = tree
    defect = class_defects(CONFIG, "carpet")[0]
    (root / f"carpet/ground_truth/{defect}/000_mask.png").unlink()
    with pytest.raises(IngestError, match=f"carpet/test/{defect}/000.png") as info:
        read_mvtec(root, progress=False)
    assert f"carpet/ground_truth/{defect}/000_mask.png" in str(info.value)


def test_mask_size_mismatch_names_both_files(tree: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = tree
    defect = class_defects(CONFIG, "washer")[1]
    _save(root / f"washer/ground_truth/{defect}/000_mask.png", np.full((20, 30), 255, np.uint8))
    with pytest.raises(IngestError) as info:
        read_mvtec(root, progress=False)
    message = str(info.value)
    assert (
        f"washer/ground_truth/{defect}/000_mask.png" in message
        and f"washer/test/{defect}/000.png" in message
    )
    assert "30x20" in message and "40x40" in message


def test_missing_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="nowhere"):
        read_mvtec(tmp_path / "nowhere", progress=False)
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(IngestError, match="no MVTec-layout classes found under"):
        read_mvtec(tmp_path / "empty", progress=False)


def test_stem_named_masks_other_extensions_and_empty_masks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # MPDD / WFDD name masks <stem>.png; extensions are case-insensitive; an all-zero mask is kept with a warning.
    root = tmp_path / "wfdd"
    rng = np.random.default_rng(0)
    _save(root / "grey_cloth/train/good/a.PNG", rng.integers(0, 255, (16, 24, 3), dtype=np.uint8))
    _save(root / "grey_cloth/test/good/a.png", rng.integers(0, 255, (16, 24, 3), dtype=np.uint8))
    _save(root / "grey_cloth/test/hole/7.png", rng.integers(0, 255, (16, 24, 3), dtype=np.uint8))
    mask = np.zeros((16, 24), np.uint8)
    mask[4:6, 10:15] = 255
    _save(root / "grey_cloth/ground_truth/hole/7.png", mask)
    _save(root / "grey_cloth/test/flat/3.jpg", rng.integers(0, 255, (16, 24, 3), dtype=np.uint8))
    _save(root / "grey_cloth/ground_truth/flat/3_mask.png", np.zeros((16, 24), np.uint8))
    (root / "grey_cloth/test/good/readme.txt").write_text("not an image")
    with caplog.at_level("WARNING"):
        manifest = read_mvtec(root, source="wfdd", progress=False)
    assert len(manifest) == 4
    hole = manifest.set_index("image_path").loc["grey_cloth/test/hole/7.png"]
    assert hole["mask_path"] == "grey_cloth/ground_truth/hole/7.png"
    assert hole["bbox"] == [10, 4, 5, 2] and (hole["width"], hole["height"]) == (24, 16)
    flat = manifest.set_index("image_path").loc["grey_cloth/test/flat/3.jpg"]
    assert flat["label"] == 1 and flat["bbox"] == []
    assert "grey_cloth/ground_truth/flat/3_mask.png" in caplog.text
