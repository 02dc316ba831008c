"""The annotate pipeline on a catalog with the real riad_coco / riad_qa entries: the LLM backend
(a fake OpenAI-compatible server on loopback) writes the QA table and COCO file, a rerun is served
from the reply cache, and a failed image writes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from helpers import REPO
from helpers.fake_llm import FakeLlm, chat, echo, user_text_of
from helpers.trees import taxonomy_params, write_widget_tree
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from vmad_pipeline.datasets.masks import rle_to_mask
from vmad_pipeline.pipelines.annotate import create_pipeline

TAXONOMY = taxonomy_params()


@pytest.fixture
def server():
    fake = FakeLlm()
    yield fake
    fake.close()


def write_tree(root: Path) -> pd.DataFrame:
    return write_widget_tree(
        root,
        [  # name, label, defect id, source defect name, mask box (y0, y1, x0, x1)
            ("good_0", 0, -1, "", None),
            ("scratch_0", 1, 0, "scratch", (1, 4, 1, 6)),
            ("stain_0", 1, 3, "stain", (10, 15, 10, 15)),
            ("odd_0", 1, -1, "weird", (6, 10, 6, 10)),
        ],
    )


def catalog_with_files(tmp_path: Path, inputs: dict[str, Any]) -> DataCatalog:
    """The real catalog entries of riad_coco / riad_qa, written under tmp_path."""
    entries = yaml.safe_load((REPO / "conf" / "base" / "catalog.yml").read_text())
    config = {}
    for name in ("riad_coco", "riad_qa"):
        entry = dict(entries[name])
        entry["filepath"] = str(tmp_path / "riad" / Path(entry["filepath"]).name)
        config[name] = entry
    catalog = DataCatalog.from_config(config)
    for name, value in inputs.items():
        catalog[name] = MemoryDataset(value)
    return catalog


def test_annotate_pipeline_writes_qa_jsonl_from_the_llm(server: FakeLlm, tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    manifest = write_tree(root)
    params = {
        "backend": "llm",
        "progress": False,
        "llm": {
            "base_url": server.url,
            "model": "test-vlm",
            "backoff_s": 0.001,
            "max_backoff_s": 0.01,
            "cache_dir": str(tmp_path / "llm_cache"),
        },
    }
    inputs = {
        "manifest": manifest,
        "dataset_roots": {"synthetic": str(root)},
        "taxonomy": TAXONOMY,
        "params:annotate": params,
    }
    SequentialRunner().run(create_pipeline(), catalog_with_files(tmp_path, inputs))
    lines = (tmp_path / "riad" / "qa.jsonl").read_text().splitlines()
    qa = [json.loads(line) for line in lines]
    assert [r["image_path"] for r in qa] == [
        "widget/test/scratch_0.png",
        "widget/test/stain_0.png",
        "widget/test/odd_0.png",
    ]
    assert qa[0]["description"] == "LLM: Defect type: scratch. Object class: widget."
    assert qa[1]["description"] == "LLM: Defect type: stain. Object class: widget."
    assert qa[2]["description"].startswith(
        "LLM: Defect type: unknown (the source dataset calls it 'weird')"
    )
    assert {r["annotator"] for r in qa} == {"llm:test-vlm"}
    assert all(r["impact"] and r["suggestion"] for r in qa)
    coco = json.loads((tmp_path / "riad" / "instances.json").read_text())
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in coco["annotations"]] == [
        (1, 0, [1, 1, 5, 3]),
        (2, 3, [10, 10, 5, 5]),
    ]
    mask = rle_to_mask(coco["annotations"][1]["segmentation"])
    assert mask.shape == (16, 16) and mask[10:15, 10:15].all() and mask.sum() == 25
    assert server.count == 3
    # a rerun sends nothing and writes the same files
    (tmp_path / "riad" / "qa.jsonl").unlink()
    SequentialRunner().run(create_pipeline(), catalog_with_files(tmp_path, inputs))
    assert server.count == 3
    assert (tmp_path / "riad" / "qa.jsonl").read_text().splitlines() == lines


def test_annotate_pipeline_writes_nothing_when_an_image_fails(tmp_path: Path) -> None:
    fake = FakeLlm(lambda n, b: chat("no") if "stain" in user_text_of(b) else echo(n, b))
    root = tmp_path / "synthetic"
    inputs = {
        "manifest": write_tree(root),
        "dataset_roots": {"synthetic": str(root)},
        "taxonomy": TAXONOMY,
        "params:annotate": {
            "backend": "llm",
            "progress": False,
            "llm": {
                "base_url": fake.url,
                "model": "m",
                "invalid_reply_retries": 0,
                "cache_dir": str(tmp_path / "llm_cache"),
            },
        },
    }
    try:
        with pytest.raises(Exception, match="synthetic/widget/test/stain_0.png: malformed reply"):
            SequentialRunner().run(create_pipeline(), catalog_with_files(tmp_path, inputs))
    finally:
        fake.close()
    assert not (tmp_path / "riad").exists()
