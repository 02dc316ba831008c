"""The transfer tree (tests/helpers/transfer.py) is a valid MVTec-layout tree that the embedded
generator did not draw: other classes, other defect types."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from helpers import REPO
from helpers.transfer import DEFECTS, write_transfer_tree
from PIL import Image

from vmad_pipeline.annotation import apply_taxonomy
from vmad_pipeline.configs.ingest import SYNTHETIC_CLASSES, SYNTHETIC_DEFECTS
from vmad_pipeline.datasets.mvtec import read_mvtec


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    counts = write_transfer_tree(root, size=64, n_good=2, n_defect=1)
    return root, counts


def test_the_tree_reads_as_mvtec_with_known_defect_types(tree):
    root, counts = tree
    rows = read_mvtec(root, source="transfer", progress=False)
    test = rows[rows["split"] == "test"]
    assert test.groupby("category").size().to_dict() == counts
    taxonomy = yaml.safe_load((REPO / "conf" / "base" / "taxonomy.yml").read_text())
    typed = apply_taxonomy(test, taxonomy, datasets={"transfer": "mvtec"})
    anomalous = typed[typed["label"] == 1]
    assert (anomalous["defect_id"] >= 0).all()  # every defect folder names a taxonomy type
    assert set(anomalous["defect_type"]) == {d for ds in DEFECTS.values() for d in ds}


def test_nothing_in_it_was_drawn_by_the_generator(tree):
    assert not set(DEFECTS) & set(SYNTHETIC_CLASSES)
    assert not {d for ds in DEFECTS.values() for d in ds} & set(SYNTHETIC_DEFECTS)


def test_every_mask_marks_a_small_visible_defect(tree):
    root, _ = tree
    masks = sorted(root.glob("*/ground_truth/*/*_mask.png"))
    assert len(masks) == sum(len(d) for d in DEFECTS.values())
    for path in masks:
        mask = np.asarray(Image.open(path)) > 0
        assert 0 < mask.mean() < 0.1, path
