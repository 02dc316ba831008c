"""The split pipeline on an in-memory catalog: the stored splits name the configured test class."""

from __future__ import annotations

import yaml
from helpers import REPO
from helpers.trees import split_manifest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from vmad_pipeline.pipelines.split import create_pipeline

ONE = split_manifest({"syn": [f"c{i}" for i in range(10)]})


def default_params() -> dict:
    return yaml.safe_load((REPO / "conf/base/parameters_split.yml").read_text())["split"]


def test_pipeline_on_an_in_memory_catalog() -> None:
    catalog = DataCatalog(
        {
            "manifest": MemoryDataset(ONE),
            "params:split": MemoryDataset({**default_params(), "test_classes": ["c3"]}),
            "splits": MemoryDataset(),
        }
    )
    SequentialRunner().run(create_pipeline(), catalog)
    splits = catalog.load("splits")
    assert splits["test_classes"] == ["c3"] and splits["protocol"] == "cross_category"
