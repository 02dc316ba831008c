"""A model is never scored as zero-shot on a class it was trained on (issue 11): the checkpoint
records what it was trained on; a split changed after training stops evaluate before anything is
predicted; another tree's (or MMAD's) training classes are refused or reported apart, never in
the unseen mean."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers.trees import split_manifest

from vmad_pipeline.configs.evaluate import parse_evaluate_params
from vmad_pipeline.evaluation.eval_set import SeenClassError, check_seen, select_eval_set
from vmad_pipeline.evaluation.grading import grade_answers
from vmad_pipeline.evaluation.predictions import Predictions
from vmad_pipeline.evaluation.report import compute_metrics
from vmad_pipeline.splitting import make_split, seen_mask, split_rows, training_record

MANIFEST = split_manifest({"syn": ["capsule", "carpet", "leather", "pcb", "tile", "washer"]})


def split(test_classes: list[str]) -> dict:
    return make_split(MANIFEST, {"test_classes": test_classes})


def record(splits: dict) -> dict:
    return training_record(split_rows(MANIFEST, splits)[0], splits)


def test_the_record_names_classes_sources_and_the_split():
    splits = split(["pcb", "washer"])
    rec = record(splits)
    assert rec["classes"] == ["capsule", "carpet", "leather", "tile"]
    assert rec["sources"] == ["syn"] and ["syn", "tile"] in rec["pairs"]
    assert rec["split_hash"] != record(split(["pcb", "tile"]))["split_hash"]


def test_a_split_changed_after_training_stops_before_predicting():
    """Trained with test classes pcb, washer; the split now tests capsule and carpet, which the
    model trained on: evaluate refuses (it used to report them as unseen)."""
    trained = record(split(["pcb", "washer"]))
    cfg = parse_evaluate_params({})
    with pytest.raises(SeenClassError, match=r"capsule, carpet were training classes.*changed"):
        select_eval_set(MANIFEST, split(["capsule", "carpet"]), {}, {}, cfg, trained)


def test_another_split_of_unseen_classes_stands_with_a_warning(caplog):
    trained = record(split(["pcb", "tile", "washer"]))
    rows, _ = select_eval_set(
        MANIFEST, split(["pcb", "washer"]), {}, {}, parse_evaluate_params({}), trained
    )
    assert not rows["seen"].any() and "not the split this model was trained with" in caplog.text


def test_another_trees_training_classes_refused_by_parameter():
    trained = record(split(["pcb", "washer"]))
    rows = MANIFEST.assign(seen=seen_mask(MANIFEST, trained).to_numpy())
    cfg = parse_evaluate_params({"seen_classes": "refuse"})
    with pytest.raises(SeenClassError, match=r"capsule, carpet, leather, tile.*refuse"):
        check_seen(rows, trained, cfg, splits=None)
    check_seen(rows, trained, parse_evaluate_params({}), splits=None)  # report: passes


def test_shared_names_allow_tells_classes_apart_by_source():
    trained = {"classes": ["screw"], "pairs": [["mvtec", "screw"]], "shared_names": "allow"}
    rows = pd.DataFrame({"source": ["mvtec", "mpdd"], "category": ["screw", "screw"]})
    assert seen_mask(rows, trained).tolist() == [True, False]
    assert seen_mask(rows, {**trained, "shared_names": "error"}).tolist() == [True, True]


def test_seen_classes_are_reported_apart_never_in_the_unseen_mean():
    size = 4
    rows = pd.DataFrame(
        {
            "source": "t",
            "category": ["new"] * 4 + ["old"] * 4,
            "image_path": [f"{i}.png" for i in range(8)],
            "label": [0, 0, 1, 1] * 2,
            "seen": [False] * 4 + [True] * 4,
        }
    )
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.2, 0.1])  # new: perfect, old: inverted
    maps = np.stack([np.full((size, size), s, np.float32) for s in scores])
    masks = [np.zeros((size, size), np.uint8) for _ in range(8)]
    for i in (2, 3, 6, 7):
        masks[i][:2, :2] = 1
    pred = Predictions(
        maps=maps,
        map_max=scores,
        p_yes=None,
        scores=scores,
        answers=["No."] * 8,
        seg_found=np.ones(8, bool),
    )
    cfg = parse_evaluate_params({"eval_size": size})
    graded = grade_answers(rows, pred.as_dict(), masks, None)
    report, flat, table = compute_metrics(rows, pred, masks, graded, cfg)
    assert set(report["per_class"]) == {"new"} and report["mean"]["image_auroc"] == 1.0
    assert set(report["seen"]["per_class"]) == {"old"}
    assert (
        report["seen"]["mean"]["image_auroc"] == 0.0 and "not zero-shot" in report["seen"]["note"]
    )
    assert flat["image_auroc"] == 1.0 and flat["seen/image_auroc"] == 0.0
    assert table.set_index("category")["seen"].to_dict() == {"new": False, "old": True}


class Always:
    """An answerer that always picks option A (MMAD needs nothing else of a predictor)."""

    image_size = 8

    def answer(self, images, texts, *, max_new_tokens, batch_size):
        from vmad_pipeline.inference.predictor import Answers

        return Answers(texts=["A"] * len(texts))


def test_mmad_questions_about_training_classes_refused_or_reported_apart(tmp_path):
    import json

    from PIL import Image

    from vmad_pipeline.evaluation.mmad import evaluate_mmad

    doc = {}
    for obj in ("capsule", "gadget"):
        key = f"DS/{obj}/test/good/000.png"
        (tmp_path / key).parent.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / key)
        turn = {"Question": "Defect?", "Options": {"A": "Yes.", "B": "No."}, "Answer": "B"}
        doc[key] = {
            "mask_path": None,
            "similar_templates": [],
            "random_templates": [],
            "conversation": [{**turn, "type": "Anomaly Detection"}],
        }
    (tmp_path / "mmad.json").write_text(json.dumps(doc))
    trained = record(split(["pcb", "washer"]))  # capsule is a training class
    params = {"progress": False, "mmad": {"questions": str(tmp_path / "mmad.json")}}
    with pytest.raises(SeenClassError, match="MMAD questions of capsule"):
        evaluate_mmad(
            Always(), parse_evaluate_params({**params, "seen_classes": "refuse"}), trained
        )
    table, report = evaluate_mmad(Always(), parse_evaluate_params(params), trained)
    assert report["n_questions"] == 1 and report["seen"]["n_questions"] == 1
    assert table.set_index("image_path")["seen"].to_dict() == {
        "DS/gadget/test/good/000.png": False,
        "DS/capsule/test/good/000.png": True,
    }
