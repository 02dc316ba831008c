"""Prediction on new images: which files and names, the files and lines written, resume, and
unreadable files reported while the rest goes on."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO
from helpers.models import CFG
from PIL import Image

from vmad_pipeline import prompts
from vmad_pipeline.inference.batch import folder_category, list_inputs, predict_items
from vmad_pipeline.inference.predictor import Predictor
from vmad_pipeline.inference.service import Detector
from vmad_pipeline.inference.store import PredictionStore
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.training.tokenizer import train_tokenizer


def tree(root, sizes=((40, 30), (64, 64))):
    """An MVTec-style class folder and a plain folder, images of several sizes."""
    paths = []
    for i, (w, h) in enumerate(sizes):
        for folder in ("screw/test/crack", "plain"):
            path = root / folder / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((h, w, 3), 40 * i + 30, np.uint8)).save(path)
            paths.append(path)
    return paths


def test_folder_glob_and_manifest_name_their_images_and_objects(tmp_path):
    tree(tmp_path)
    masks = tmp_path / "screw/ground_truth/crack"  # an MVTec layout's masks are not inputs
    masks.mkdir(parents=True)
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(masks / "000_mask.png")
    assert folder_category(tmp_path / "screw/test/crack/000.png") == "screw"
    assert folder_category(tmp_path / "plain/000.png") == "plain"
    whole = list_inputs(str(tmp_path))
    assert [(i.key, i.category) for i in whole] == [
        ("plain__000", "plain"),
        ("plain__001", "plain"),
        ("screw__test__crack__000", "screw"),
        ("screw__test__crack__001", "screw"),
    ]
    assert len(list_inputs(str(tmp_path / "**/*.png"))) == 4
    globbed = list_inputs(str(tmp_path / "*/test/*/*.png"), category="bolt")
    assert [(i.key, i.category) for i in globbed] == [
        ("screw__test__crack__000", "bolt"),
        ("screw__test__crack__001", "bolt"),
    ]
    pd.DataFrame({"image_path": ["plain/001.png"], "category": ["washer"]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    (item,) = list_inputs(str(tmp_path / "m.csv"))
    assert item.category == "washer" and item.path == tmp_path / "plain/001.png"
    with pytest.raises(FileNotFoundError, match="no image found"):
        list_inputs(str(tmp_path / "nothing/*.png"))


@pytest.fixture(scope="module")
def predictor():
    texts = [prompts.vqa_prompt(c) for c in ("screw", "plain")] * 5
    texts += ["Yes. A scratch on the top left.", "No. The part looks normal."] * 5
    tok = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    return Predictor(build_vmad(CFG, tok).eval(), tok, max_new_tokens=6)


def taxonomy():
    from vmad_pipeline.annotation.taxonomy import Taxonomy

    return Taxonomy.from_dict(yaml.safe_load((REPO / "conf/base/taxonomy.yml").read_text()))


def test_every_image_gets_a_line_and_its_pictures_at_its_own_size(tmp_path, predictor):
    tree(tmp_path / "in")
    (tmp_path / "in/plain/002.png").write_bytes(b"not an image")  # reported, not fatal
    store = PredictionStore(tmp_path / "out")
    detector = Detector(predictor, image_threshold=0.5, pixel_threshold=0.5, taxonomy=taxonomy())
    counts = predict_items(detector, list_inputs(str(tmp_path / "in")), store, 2, False)
    timing = {k: counts.pop(k) for k in ("seconds", "images_per_s")}
    assert counts == {"images": 5, "already_done": 0, "predicted": 4, "failed": 1}
    assert timing["seconds"] > 0 and timing["images_per_s"] > 0
    records = {r["key"]: r for r in store.records()}
    assert "not an image file PIL can read" in records["plain__002"]["error"]  # from its header
    good = records["screw__test__crack__000"]
    assert set(good) >= {"score", "anomalous", "answer", "seg_found", "location", "defect_type"}
    assert good["anomalous"] == (good["score"] >= 0.5) and "[SEG]" not in good["answer"]
    for kind in ("mask", "map", "overlay"):
        with Image.open(tmp_path / "out" / good["files"][kind]) as im:
            assert im.size == (40, 30)  # the input image's own size
    with Image.open(tmp_path / "out" / good["files"]["mask"]) as im:
        assert set(np.unique(np.asarray(im))) <= {0, 255}


def test_a_rerun_skips_what_is_done_and_a_partial_line_is_ignored(tmp_path, predictor):
    tree(tmp_path / "in")
    store = PredictionStore(tmp_path / "out")
    detector = Detector(predictor, image_threshold=0.5, pixel_threshold=0.5)
    items = list_inputs(str(tmp_path / "in"))
    predict_items(detector, items[:2], store, 4, False)
    with open(store.lines, "a") as fh:
        fh.write('{"key": "plain__00')  # a run killed while writing its last line
    counts = predict_items(detector, items, store, 4, False)
    assert counts["already_done"] == 2 and counts["predicted"] == 2
    keys = [r["key"] for r in store.records()]
    assert sorted(keys) == sorted(i.key for i in items) and len(keys) == 4
    assert json.loads(store.lines.read_text().splitlines()[0])["key"] == items[0].key


def test_a_manifest_name_the_text_rule_refuses_is_an_error_line_not_a_failed_run(
    tmp_path, predictor
):
    """A manifest's category enters the prompt as a user's text does (prompts.user_text): one
    holding [SEG] or longer than the limit gets its image an error line; the others predict."""
    tree(tmp_path)  # the manifest's paths are relative to its folder
    names = ["washer", "nut [SEG]", "x" * 500]
    paths = ["plain/000.png", "plain/001.png", "screw/test/crack/000.png"]
    pd.DataFrame({"image_path": paths, "category": names}).to_csv(tmp_path / "m.csv", index=False)
    store = PredictionStore(tmp_path / "out")
    detector = Detector(predictor, image_threshold=0.5, pixel_threshold=0.5)
    counts = predict_items(detector, list_inputs(str(tmp_path / "m.csv")), store, 8, False)
    assert (counts["predicted"], counts["failed"]) == (1, 2)
    errors = {r["category"][:9]: r.get("error") for r in store.records()}
    assert errors["washer"] is None and "may not contain" in errors["nut [SEG]"]
    assert "500 characters" in errors["xxxxxxxxx"]


def test_an_image_over_the_pixel_limit_is_an_error_line_refused_from_its_header(
    tmp_path, predictor
):
    """predict had no pixel cap (a 12,000 x 12,000 PNG was predicted): the REST server's rule
    (images.check_pixels), refused before anything is decoded."""
    from vmad_pipeline.configs.predict import parse_predict_params

    tree(tmp_path / "in")  # 40 x 30 and 64 x 64 images
    store = PredictionStore(tmp_path / "out")
    detector = Detector(predictor, image_threshold=0.5, pixel_threshold=0.5)
    items = list_inputs(str(tmp_path / "in"))
    counts = predict_items(detector, items, store, 8, False, max_pixels=40 * 30)
    assert (counts["predicted"], counts["failed"]) == (2, 2)
    refused = [r["error"] for r in store.records() if r.get("error")]
    assert all("64 x 64 pixels is over predict.max_pixels of 1200" in e for e in refused)
    assert parse_predict_params({}).max_pixels == 40_000_000
