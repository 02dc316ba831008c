"""The evaluate nodes on tiny hand-made inputs (two classes, 4 x 4 maps) and a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO
from helpers.models import CFG  # the tiny model sizes every model test shares
from PIL import Image
from sklearn.metrics import roc_curve

from vmad_pipeline import prompts
from vmad_pipeline.configs import ConfigError
from vmad_pipeline.configs.evaluate import ScoreRule, parse_evaluate_params
from vmad_pipeline.evaluation.curves import curve_data
from vmad_pipeline.evaluation.figures import (
    class_table_markdown,
    pick_cases,
    plot_curves,
    plot_overlays,
)
from vmad_pipeline.evaluation.grading import grade_answers
from vmad_pipeline.evaluation.mmad import evaluate_mmad, mmad_mlflow
from vmad_pipeline.evaluation.predictions import Predictions
from vmad_pipeline.evaluation.report import compute_metrics
from vmad_pipeline.evaluation.scores import image_scores
from vmad_pipeline.images import load_rgb, to_model_inputs
from vmad_pipeline.inference.predictor import Predictor
from vmad_pipeline.metrics import aupro, pixel_ap, pixel_auroc, pro_200_thresholds
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.pipelines.evaluate.nodes import load_detector, predict_eval_set
from vmad_pipeline.prompts import encode_prompt, yes_no_tokens
from vmad_pipeline.training.tokenizer import train_tokenizer

TAXONOMY = yaml.safe_load((REPO / "conf/base/taxonomy.yml").read_text())
SIZE = 4
# alpha: labels 0 0 1 1, map maxima 0.1 0.6 0.4 0.9 -> AUROC 3/4, AP 1/2 + 1/2 * 2/3, F1-max 0.8
# beta:  labels 0 1,     map maxima 0.2 0.3         -> AUROC 1, AP 1, F1-max 1
MAP_MAX = [0.1, 0.6, 0.4, 0.9, 0.2, 0.3]
P_YES = [0.2, 0.1, 0.7, 0.8, 0.5, 0.6]
ANSWERS = [
    "No.",  # right
    "Yes. A scratch at the top left.",  # wrong (normal image)
    "Yes. Scratches on the top left.",  # right; type (synonym) and location right
    "maybe",  # unparseable: wrong everywhere
    "No.",  # right
    "Yes. A dent at the bottom right.",  # right; type and location right
]
PARAMS = {"eval_size": SIZE, "progress": False, "n_overlays": 1}


def top_left() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[:2, :2] = 1
    return m


def bottom_right() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[2:, 2:] = 1
    return m


def eval_set() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": "src",
            "category": ["alpha"] * 4 + ["beta"] * 2,
            "image_path": [f"img{i}.png" for i in range(6)],
            "mask_path": ["", "", "m2.png", "m3.png", "", "m5.png"],
            "label": [0, 0, 1, 1, 0, 1],
            "defect_name": ["", "", "scratch", "crack", "", "dent"],
            "defect_type": ["", "", "scratch", "crack", "", "dent"],
            "defect_id": [-1, -1, 0, 1, -1, 8],
        }
    )


def masks() -> list[np.ndarray]:
    empty = np.zeros((SIZE, SIZE), np.uint8)
    return [empty, empty, top_left(), bottom_right(), empty, bottom_right()]


def predictions() -> dict:
    rng = np.random.default_rng(0)
    maps = []
    for i, peak in enumerate(MAP_MAX):
        m = (rng.random((SIZE, SIZE)) * 0.9 * peak).astype(np.float32)
        m[i % SIZE, (i + 1) % SIZE] = peak
        maps.append(m)
    maps = np.stack(maps)
    return {
        "maps": maps,
        "map_max": maps.reshape(6, -1).max(1),
        "p_yes": np.array(P_YES),
        "scores": maps.reshape(6, -1).max(1),
        "answers": ["It is [SEG]."] * 6,
        "detection_answers": ANSWERS,
        "seg_found": np.array([True, True, True, True, False, True]),
    }


def scored(pred: dict, cfg) -> dict:
    """The predictions with their image scores by the rule of ``cfg`` (as the predictor makes
    them)."""
    return {**pred, "scores": image_scores(pred["map_max"], pred["p_yes"], cfg.score_rule)}


def typed(pred: dict) -> Predictions:
    """The typed predictions (what the report reads) of a predictions dict."""
    return Predictions.from_dict(pred)


def metrics(params: dict, taxonomy: dict | None = None) -> tuple:
    """compute_metrics as the pipeline runs it: scores by the rule, answers graded once."""
    cfg = parse_evaluate_params(params)
    pred = scored(predictions(), cfg)
    graded = grade_answers(eval_set(), pred, masks(), taxonomy)
    return compute_metrics(eval_set(), typed(pred), masks(), graded, cfg)


# ----------------------------------------------------------------------------- params, scores


def test_pipeline_wires_every_report() -> None:
    from vmad_pipeline.pipelines.evaluate import create_pipeline

    outputs = create_pipeline().all_outputs()
    assert {
        "metrics",
        "metrics_per_class_md",
        "eval_answers",
        "roc_curves",
        "pro_figure",
        "overlays",
        "mmad_metrics",
        "mmad_mlflow",
    } <= outputs


def test_params_validate_score_source_and_weight() -> None:
    with pytest.raises(ConfigError, match="evaluate.score_rule.source"):
        parse_evaluate_params({"score_rule": {"source": "max"}})
    with pytest.raises(ConfigError, match="evaluate.score_rule.fusion_weight"):
        parse_evaluate_params({"score_rule": {"fusion_weight": 1.5}})
    with pytest.raises(ConfigError, match="evaluate.score_source: moved to evaluate.score_rule"):
        parse_evaluate_params({"score_source": "fused"})  # the older layout is named
    with pytest.raises(ConfigError, match="evaluate.mmad.limit"):
        parse_evaluate_params({"mmad": {"limit": -1}})
    with pytest.raises(ConfigError, match="evaluate.colour"):
        parse_evaluate_params({"colour": 1})
    shipped = yaml.safe_load((REPO / "conf/base/parameters_evaluate.yml").read_text())
    assert parse_evaluate_params(shipped["evaluate"]).score_rule.source == "fused"


def test_image_scores_by_source() -> None:
    pred = predictions()
    maxima, p_yes = pred["map_max"], pred["p_yes"]
    np.testing.assert_allclose(image_scores(maxima, p_yes, ScoreRule()), MAP_MAX, rtol=1e-6)
    np.testing.assert_allclose(image_scores(maxima, p_yes, ScoreRule("p_yes")), P_YES)
    fused = image_scores(maxima, p_yes, ScoreRule("fused", 0.25))
    np.testing.assert_allclose(fused, 0.25 * np.array(P_YES) + 0.75 * np.array(MAP_MAX), 1e-6)
    with pytest.raises(ValueError, match="needs P\\(yes\\)"):
        image_scores(maxima, None, ScoreRule("p_yes"))


# ----------------------------------------------------------------------------- metrics


def test_compute_metrics_hand_example() -> None:
    report, flat, table = metrics(PARAMS, TAXONOMY)
    alpha, beta = report["per_class"]["alpha"], report["per_class"]["beta"]
    assert alpha["image_auroc"] == pytest.approx(0.75)
    assert alpha["image_ap"] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-6)
    assert alpha["image_f1_max"] == pytest.approx(0.8)
    assert beta["image_auroc"] == beta["image_ap"] == beta["image_f1_max"] == 1.0
    # unweighted class mean (pooling the six images would give 7/9)
    assert report["mean"]["image_auroc"] == pytest.approx(0.875)
    # text: alpha 2 of 4 right, balanced (1/2 + 1/2) / 2; beta all right
    assert alpha["answer_accuracy"] == 0.5 and alpha["answer_balanced_accuracy"] == 0.5
    assert beta["answer_accuracy"] == 1.0 and report["mean"]["answer_accuracy"] == 0.75
    assert alpha["location_accuracy"] == 0.5 and beta["location_accuracy"] == 1.0
    assert alpha["defect_type_accuracy"] == 0.5 and beta["defect_type_accuracy"] == 1.0
    assert alpha["unparsed_answers"] == 1 and report["counts"]["unparsed_answers"] == 1
    assert beta["seg_found_rate"] == 0.5
    # pixel metrics: exactly the metric functions on the class's pooled maps
    pred, m = predictions(), masks()
    a_maps, a_masks = list(pred["maps"][:4]), m[:4]
    assert alpha["pixel_auroc"] == pytest.approx(pixel_auroc(a_masks, a_maps), abs=1e-6)
    assert alpha["pixel_ap"] == pytest.approx(pixel_ap(a_masks, a_maps), abs=1e-6)
    assert alpha["aupro"] == pytest.approx(aupro(a_masks, a_maps), abs=1e-6)
    pro200 = pro_200_thresholds(a_masks, a_maps)
    assert (alpha["pro_200_thresholds"] is None and math.isnan(pro200)) or alpha[
        "pro_200_thresholds"
    ] == pytest.approx(pro200, abs=1e-6)
    assert report["settings"]["score_source"] == "map_max"
    assert report["settings"]["eval_size"] == SIZE
    assert flat["alpha/image_auroc"] == pytest.approx(0.75) and "image_auroc" in flat
    assert list(table["category"]) == ["alpha", "beta"] and len(table) == 2


def test_compute_metrics_follows_score_source() -> None:
    fused = {**PARAMS, "score_rule": {"source": "fused", "fusion_weight": 0.5}}
    report, _, _ = metrics(fused)
    # alpha fused scores 0.15, 0.35, 0.55, 0.85: separated (map max alone gives 3/4)
    assert report["per_class"]["alpha"]["image_auroc"] == pytest.approx(1.0)
    assert report["settings"]["score_source"] == "fused"
    assert report["settings"]["fusion_weight"] == 0.5
    report, _, _ = metrics({"score_rule": {"source": "p_yes"}})
    assert report["per_class"]["alpha"]["image_auroc"] == 1.0
    # without a taxonomy there is no defect-type accuracy, but the rest is there
    assert report["mean"]["defect_type_accuracy"] is None
    assert report["mean"]["location_accuracy"] == 0.75


def test_grade_answers_rows() -> None:
    graded = grade_answers(eval_set(), predictions(), masks(), TAXONOMY)
    assert len(graded) == 6
    assert graded["answer_correct"].tolist() == [True, False, True, False, True, True]
    assert graded["answer_parsed"].tolist() == [True, True, True, False, True, True]
    assert graded.loc[2, "named_type"] == "scratch" and graded.loc[2, "type_correct"]
    assert graded.loc[2, "gt_location"] == "top left" and graded.loc[2, "location_correct"]
    assert graded.loc[5, "gt_location"] == "bottom right"
    assert pd.isna(graded.loc[0, "type_correct"]) and pd.isna(graded.loc[0, "gt_location"])
    assert graded.loc[0, "question"] == "Is there any defect in the alpha?"
    assert graded["p_yes"].tolist() == P_YES


def test_follow_up_answers_are_graded_on_the_anomalous_images() -> None:
    """The follow-ups asked after the detection answer: where (against the mask's location)
    and what kind (against the label's type); images not asked have no flag."""
    follow = {
        "location": [None, None, "It is at the top left.", "It is at the top.", None, "Unsure."],
        "type": [None, None, "It is a scratch.", "It is a crack.", None, "It is a scratch."],
    }
    pred = {**predictions(), "follow_ups": follow}
    cfg = parse_evaluate_params(PARAMS)
    graded = grade_answers(eval_set(), pred, masks(), TAXONOMY)
    assert graded["follow_up_location_correct"].tolist()[2:4] == [True, False]
    assert graded["follow_up_type_correct"].tolist()[2:4] == [True, True]
    assert (
        not graded.loc[5, "follow_up_location_correct"]
        and not graded.loc[5, "follow_up_type_correct"]
    )
    assert (
        graded[["follow_up_location_correct", "follow_up_type_correct"]]
        .iloc[[0, 1, 4]]
        .isna()
        .all()
        .all()
    )
    report, flat, _ = compute_metrics(eval_set(), typed(scored(pred, cfg)), masks(), graded, cfg)
    alpha, beta = report["per_class"]["alpha"], report["per_class"]["beta"]
    assert (alpha["follow_up_location_accuracy"], alpha["follow_up_type_accuracy"]) == (0.5, 1.0)
    assert (beta["follow_up_location_accuracy"], beta["follow_up_type_accuracy"]) == (0.0, 0.0)
    without = grade_answers(eval_set(), predictions(), masks(), TAXONOMY)  # none asked
    report, _, _ = compute_metrics(
        eval_set(), typed(scored(predictions(), cfg)), masks(), without, cfg
    )
    assert report["mean"]["follow_up_location_accuracy"] is None


def test_object_name_accuracy_counts_only_answers_that_name_one() -> None:
    pred = {**predictions(), "detection_answers": list(ANSWERS)}
    pred["detection_answers"][0] = "No, the alpha looks normal."  # named, right
    pred["detection_answers"][1] = "Yes. A scratch on the top left of the cable."  # named, wrong
    cfg = parse_evaluate_params(PARAMS)
    graded = grade_answers(eval_set(), pred, masks(), TAXONOMY)
    report, _, _ = compute_metrics(eval_set(), typed(scored(pred, cfg)), masks(), graded, cfg)
    alpha, beta = report["per_class"]["alpha"], report["per_class"]["beta"]
    assert alpha["object_name_accuracy"] == 0.5 and alpha["object_named_share"] == 0.5
    # beta's answers name no object: its name accuracy is undefined, not perfect
    assert beta["object_name_accuracy"] is None and beta["object_named_share"] == 0.0


# ----------------------------------------------------------------------------- reports


def test_class_table_markdown() -> None:
    report, _, table = metrics(PARAMS, TAXONOMY)
    md = class_table_markdown(table, report)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 2 + 1  # header, rule, two classes, mean
    assert "| AUPRO |" in rows[0] and "PRO-200 (approx.)" in rows[0]
    assert rows[-1].startswith("| **mean** | 6 | 3 | 0.875 |")
    assert rows[2].startswith("| alpha | 4 | 2 | 0.750 | 0.833 | 0.800 |")
    assert "`map_max`" in md
    # the model with references: a section per k (and batch), from metrics.json "shots"
    part = {k: report[k] for k in ("mean", "per_class", "counts")}
    md = class_table_markdown(table, {**report, "shots": {"4": part, "batch": part}})
    assert "## With 4 normal reference(s) per class" in md and "## Batch mode" in md
    assert md.count("| **mean** | 6 | 3 | 0.875 |") == 3
    assert class_table_markdown(table, {**report, "shots": {"note": "no cue"}}) == (
        class_table_markdown(table, report)
    )


def test_curve_data_is_exact_roc_and_sampled_pro() -> None:
    params = {**PARAMS, "curve_points": 3001}
    es = eval_set().assign(category=["a/b c"] * 4 + ["beta"] * 2)
    roc, pr, pro = curve_data(es, predictions(), masks(), parse_evaluate_params(params))
    assert set(roc) == set(pr) == set(pro) == {"a_b_c", "beta"}
    fpr, tpr, _ = roc_curve([0, 0, 1, 1], MAP_MAX[:4], drop_intermediate=False)
    np.testing.assert_allclose(roc["a_b_c"]["fpr"], fpr)
    np.testing.assert_allclose(roc["a_b_c"]["tpr"], tpr)
    assert np.trapezoid(roc["a_b_c"]["tpr"], roc["a_b_c"]["fpr"]) == pytest.approx(0.75)
    curve = pro["a_b_c"]
    assert curve["fpr"].iloc[0] == 0.0 and curve["fpr"].iloc[-1] == pytest.approx(0.3)
    exact = aupro(masks()[:4], list(predictions()["maps"][:4]))
    assert np.trapezoid(curve["pro"], curve["fpr"]) / 0.3 == pytest.approx(exact, abs=2e-3)
    assert list(pr["beta"].columns) == ["recall", "precision"]


def test_curve_data_skips_undefined_classes() -> None:
    es = eval_set()
    es.loc[4, "label"] = 1  # beta: only anomalous images -> no image ROC / PR
    roc, pr, pro = curve_data(es, predictions(), masks(), parse_evaluate_params(PARAMS))
    assert set(roc) == set(pr) == {"alpha"} and set(pro) == {"alpha", "beta"}


def test_pick_cases_hand_example() -> None:
    cases = pick_cases(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]), 1)
    assert cases == {
        "best anomalous": [3],
        "worst anomalous": [2],
        "best normal": [0],
        "worst normal": [1],
    }
    two = pick_cases(np.array([0, 1, 1, 1]), np.array([0.5, 0.2, 0.7, 0.3]), 2)
    assert two["best anomalous"] == [2, 3] and two["worst anomalous"] == [1, 3]
    assert two["best normal"] == [0] and two["worst normal"] == [0]


def test_plot_curves_and_overlays(tmp_path: Path) -> None:
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"img{i}.png")
    report, _, _ = metrics(PARAMS, TAXONOMY)
    roc, pr, pro = curve_data(eval_set(), predictions(), masks(), parse_evaluate_params(PARAMS))
    lazy_pro = {k: (lambda v=v: v) for k, v in pro.items()}  # as a partitioned dataset loads
    fig_roc, fig_pr, fig_pro = plot_curves(roc, pr, lazy_pro, report)
    assert len(fig_roc.axes[0].lines) == 2 + 1  # two classes and the chance diagonal
    assert len(fig_pr.axes[0].lines) == 2 and len(fig_pro.axes[0].lines) == 2
    labels = [t.get_text() for t in fig_roc.axes[0].get_legend().get_texts()]
    assert labels == ["alpha (AUROC 0.750)", "beta (AUROC 1.000)"]
    assert fig_pro.axes[0].get_xlim() == pytest.approx((0, 0.3))
    cfg = parse_evaluate_params(PARAMS)
    fig = plot_overlays(eval_set(), predictions(), masks(), {"src": str(tmp_path)}, cfg)
    assert len(fig.axes) == 2 * 4  # two classes x four cases
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "best anomalous\nscratch, score 0.40" or titles[0].startswith(
        "best anomalous\ncrack, score 0.90"
    )
    assert titles[3].startswith("worst normal\ngood, score 0.60")


# ----------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def tiny():
    # "Yes." and "No." start texts here, so byte-level BPE learns "Yes" but not "ĠYes": as the
    # trainer encodes answers (" " + answer), both begin with the lone space token.
    texts = [prompts.vqa_prompt(c) for c in ("screw", "hex_nut")] * 5
    texts += ["Yes. A scratch on the top left.", "No. The part looks normal."] * 5
    texts += [prompts.seg_prompt(c) + " " + prompts.SEG_ANSWER for c in ("screw", "alpha")] * 3
    tokenizer = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    return build_vmad(CFG, tokenizer).eval(), tokenizer


def test_yes_no_tokens_share_the_space_token(tiny) -> None:
    _, tok = tiny
    t = yes_no_tokens(tok, seg_first=False)
    yes = tok.encode(" Yes.", add_special_tokens=False)
    no = tok.encode(" No.", add_special_tokens=False)
    assert t.prefix == (yes[0],) and yes[0] == no[0]
    assert (t.yes, t.no) == (yes[1], no[1]) and t.yes != t.no


def test_yes_no_tokens_after_seg_start_with_it(tiny) -> None:
    """With [SEG] first, "Yes" and "No" part ways after it: P(yes) is read once the mask is drawn."""
    _, tok = tiny
    t = yes_no_tokens(tok, seg_first=True)
    seg = tok.convert_tokens_to_ids(prompts.SEG_TOKEN)
    yes = tok.encode(" " + prompts.detection_answer(anomalous=True), add_special_tokens=False)
    assert (
        seg in t.prefix and yes[: len(t.prefix)] == list(t.prefix) and yes[len(t.prefix)] == t.yes
    )
    assert "Yes".startswith(tok.decode([t.yes]).strip()) and "No".startswith(
        tok.decode([t.no]).strip()
    )


def test_p_yes_is_the_teacher_forced_next_token_probability(tiny) -> None:
    model, tok = tiny
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    cats = ["screw", "hex_nut_with_a_long_name", "alpha"]  # different lengths: left padding
    got = Predictor(model, tok).p_yes(images, cats, batch_size=3)
    t = yes_no_tokens(tok, seg_first=model.config.seg_first)
    for i, c in enumerate(cats):  # one image at a time, no padding, full logits
        ids = encode_prompt(tok, prompts.vqa_prompt(c), model.num_image_tokens) + list(t.prefix)
        clip, _ = to_model_inputs(images[i : i + 1], 32)
        with torch.no_grad():
            embeds, *_ = model.embed_inputs(torch.tensor([ids]), clip)
            logits = model.llm(inputs_embeds=embeds).logits[0, -1]
        p = torch.softmax(logits[[t.yes, t.no]], -1)[0].item()
        assert got[i] == pytest.approx(p, abs=1e-5)


def write_images(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / name)


def test_predict_eval_set_on_a_tiny_model(tiny, tmp_path: Path) -> None:
    es = eval_set().iloc[[0, 2]].reset_index(drop=True)
    write_images(tmp_path, list(es["image_path"]))
    mask = np.zeros((40, 40), np.uint8)
    mask[:10, :10] = 255
    Image.fromarray(mask).save(tmp_path / "m2.png")
    params = {"eval_size": 16, "progress": False, "max_new_tokens": 3}

    class Loaded:  # what the vmad_model dataset hands over: a checkpoint loaded on demand
        def load(self, weights, dtype):
            return tiny

    def predict(params):
        detector = load_detector(Loaded(), {}, params, es)  # the evaluate pipeline's nodes
        return predict_eval_set(detector, es, {"src": str(tmp_path)}, params)

    pred = predict(params)
    assert pred["maps"].shape == (2, 16, 16) and len(pred["detection_answers"]) == 2
    images = torch.stack(  # the node's P(yes) is the predictor's on the same files
        [torch.from_numpy(load_rgb(tmp_path / f, 32)).permute(2, 0, 1) for f in es["image_path"]]
    )
    expected = Predictor(*tiny).p_yes(images, list(es["category"]))
    np.testing.assert_allclose(pred["p_yes"], expected, rtol=1e-5)
    np.testing.assert_array_equal(pred["scores"], pred["map_max"])
    p_yes = predict({**params, "score_rule": {"source": "p_yes"}})
    np.testing.assert_allclose(p_yes["scores"], pred["p_yes"], rtol=1e-5)


def test_evaluate_mmad_on_a_tiny_model(tiny, tmp_path: Path) -> None:
    write_images(tmp_path, ["DS/obj/test/bad/000.png", "DS/obj/test/good/001.png"])
    turn = {"Question": "Is there any defect in the object?", "Options": {"A": "Yes.", "B": "No."}}
    doc = {
        "DS/obj/test/bad/000.png": {
            "mask_path": "DS/obj/ground_truth/bad/000.png",
            "similar_templates": [],
            "random_templates": [],
            "conversation": [
                {**turn, "Answer": "A", "type": "Anomaly Detection"},
                {
                    "Question": "Where is the defect?",
                    "Options": {"A": "Top.", "B": "Bottom.", "C": "Left."},
                    "Answer": "C",
                    "type": "Defect Localization",
                },
            ],
        },
        "DS/obj/test/good/001.png": {
            "mask_path": None,
            "similar_templates": [],
            "random_templates": [],
            "conversation": [{**turn, "Answer": "B", "type": "Anomaly Detection"}],
        },
    }
    path = tmp_path / "mmad.json"
    path.write_text(json.dumps(doc))
    params = {"progress": False, "batch_size": 2, "mmad": {"questions": str(path)}}
    table, report = evaluate_mmad(Predictor(*tiny), parse_evaluate_params(params))
    assert len(table) == 3 and report["n_questions"] == 3 and report["n_images"] == 2
    assert list(table["type"]) == ["Anomaly Detection", "Defect Localization", "Anomaly Detection"]
    assert (table["correct"] == (table["chosen"] == table["answer"])).all()
    assert report["accuracy"] == pytest.approx(table["correct"].mean())
    per_type = report["per_type"]
    assert set(per_type) == {"Anomaly Detection", "Defect Localization"}
    assert per_type["Anomaly Detection"]["n"] == 2
    assert report["mean_over_types"] == pytest.approx(
        np.mean([v["accuracy"] for v in per_type.values()])
    )
    assert json.loads(table["options"][1]) == {"A": "Top.", "B": "Bottom.", "C": "Left."}
    flat = mmad_mlflow(report)
    assert set(flat) == {
        "accuracy",
        "mean_over_types",
        "anomaly_detection/accuracy",
        "defect_localization/accuracy",
    }
    # limit, and off by default
    limit = {**params, "mmad": {"questions": str(path), "limit": 1}}
    _, limited = evaluate_mmad(Predictor(*tiny), parse_evaluate_params(limit))
    assert limited["n_questions"] == 1
    empty, off = evaluate_mmad(Predictor(*tiny), parse_evaluate_params({"progress": False}))
    assert off == {"enabled": False} and empty.empty and mmad_mlflow(off) == {}


def test_evaluate_mmad_missing_image_names_the_file(tiny, tmp_path: Path) -> None:
    doc = {
        "DS/none.png": {
            "mask_path": None,
            "similar_templates": [],
            "random_templates": [],
            "conversation": [
                {"Question": "Q?", "Options": {"A": "Yes.", "B": "No."}, "Answer": "A", "type": "t"}
            ],
        }
    }
    (tmp_path / "mmad.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="none.png"):
        params = {"progress": False, "mmad": {"questions": str(tmp_path / "mmad.json")}}
        evaluate_mmad(Predictor(*tiny), parse_evaluate_params(params))


def test_the_experts_map_and_score_are_scored_as_a_second_map_and_score() -> None:
    cfg = parse_evaluate_params(PARAMS)
    pred = scored(predictions(), cfg)
    rng = np.random.default_rng(1)
    significance = rng.random((6, SIZE, SIZE)).astype(np.float32)
    expert = np.array([0.9, 0.1, 0.8, 0.7, 0.3, 0.2])  # alpha: 0.9 on a normal image -> 1/2
    pred |= {"significance": significance, "expert_scores": expert}
    graded = grade_answers(eval_set(), pred, masks(), TAXONOMY)
    report, flat, table = compute_metrics(eval_set(), typed(pred), masks(), graded, cfg)
    alpha = report["per_class"]["alpha"]
    assert alpha["expert_image_auroc"] == pytest.approx(0.5)
    a_maps, a_masks = list(significance[:4]), masks()[:4]
    assert alpha["expert_pixel_auroc"] == pytest.approx(pixel_auroc(a_masks, a_maps), abs=1e-6)
    assert alpha["expert_aupro"] == pytest.approx(aupro(a_masks, a_maps), abs=1e-6)
    # the model's own scores are untouched
    assert alpha["image_auroc"] == pytest.approx(0.75)
    assert "alpha/expert_pixel_auroc" in flat
    # without an expert the columns stay undefined and out of the class table's markdown
    plain, _, plain_table = metrics(PARAMS, TAXONOMY)
    assert plain["mean"]["expert_image_auroc"] is None
    from vmad_pipeline.evaluation.figures import class_table_markdown

    assert "Expert" not in class_table_markdown(plain_table, plain)
    assert "Expert P-AUROC" in class_table_markdown(table, report)


def test_region_settings_are_graded_like_the_detection_answers() -> None:
    cfg = parse_evaluate_params(PARAMS)
    pred = scored(predictions(), cfg)
    right = ["No.", "No.", "Yes. A scratch at the top left.", "Yes. A crack at the bottom right."]
    right += ["No.", "Yes. A dent at the bottom right."]
    pred["region_settings"] = {
        "no_region": {"answers": ["No."] * 6},
        "oracle_region": {"answers": right},
    }
    graded = grade_answers(eval_set(), pred, masks(), TAXONOMY)
    report, _, _ = compute_metrics(eval_set(), typed(pred), masks(), graded, cfg)
    alpha = report["per_class"]["alpha"]
    assert alpha["no_region_answer_accuracy"] == 0.5  # the two normal images
    assert alpha["no_region_location_accuracy"] == 0.0
    assert alpha["oracle_region_answer_accuracy"] == 1.0
    assert alpha["oracle_region_location_accuracy"] == 1.0
    assert alpha["oracle_region_defect_type_accuracy"] == 1.0
    # the predicted setting is the detection answers' own
    assert alpha["answer_accuracy"] == 0.5 and alpha["location_accuracy"] == 0.5


def test_the_metrics_node_reports_the_decision_at_the_models_thresholds() -> None:
    """The node hands the model's calibrated thresholds (the predictions' ``decision``) to the
    report: the decision at its image threshold and where the thresholds came from; none without."""
    from vmad_pipeline.pipelines.evaluate.nodes import compute_metrics as metrics_node

    cfg = parse_evaluate_params(PARAMS)
    pred = scored(predictions(), cfg)  # map maxima 0.1 0.6 0.4 0.9 0.2 0.3, labels 0 0 1 1 0 1
    graded = grade_answers(eval_set(), pred, masks(), TAXONOMY)
    chosen = {"image_threshold": 0.35, "pixel_threshold": 0.5, "image_from": "validation"}
    chosen |= {"pixel_from": "validation", "calibrated": True, "score_source": "map_max"}
    shots = {"4": {"mean": {}}}
    report, flat, _ = metrics_node(
        eval_set(), {**pred, "decision": chosen}, masks(), graded, shots, PARAMS
    )
    assert report["shots"] == shots  # the model with references, beside k = 0
    # >= 0.35 flags images 1, 2, 3: tp 2 (2, 3), fp 1 (1), fn 1 (5), tn 2 (0, 4)
    assert report["decision"] == {
        "threshold": 0.35,
        **{"tp": 2, "fp": 1, "tn": 2, "fn": 1},
        **dict.fromkeys(("precision", "recall", "f1"), pytest.approx(2 / 3)),
        **{k: chosen[k] for k in ("image_threshold", "pixel_threshold", "image_from")},
        **{k: chosen[k] for k in ("pixel_from", "calibrated")},
    }
    assert flat["decision/f1"] == pytest.approx(2 / 3) and flat["decision/threshold"] == 0.35
    report, flat, _ = metrics_node(
        eval_set(), {**pred, "decision": None}, masks(), graded, {}, PARAMS
    )
    assert "decision" not in report and not any(k.startswith("decision/") for k in flat)


def test_mmad_reads_the_first_similar_template_as_the_reference(tmp_path: Path) -> None:
    """MMAD's 1-shot protocol: a model with the reference cue compares each image with its first
    similar normal template (the same memory as that template's patches); none without one."""
    import dataclasses

    from helpers.models import SMALL_CFG, tiny_tokenizer

    from vmad_pipeline.configs.model import ReferenceCueConfig
    from vmad_pipeline.models.build import build_vmad

    write_images(tmp_path, ["DS/obj/test/bad/000.png", "DS/obj/train/good/005.png"])
    turn = {"Question": "Is there any defect?", "Options": {"A": "Yes.", "B": "No."}}
    entry = {
        "mask_path": None,
        "random_templates": [],
        "conversation": [{**turn, "Answer": "A", "type": "Anomaly Detection"}],
    }
    doc = {
        "DS/obj/test/bad/000.png": {**entry, "similar_templates": ["DS/obj/train/good/005.png"]},
        "DS/obj/train/good/005.png": {**entry, "similar_templates": []},
    }
    path = tmp_path / "mmad.json"
    path.write_text(json.dumps(doc))
    tok = tiny_tokenizer()
    cfg = dataclasses.replace(SMALL_CFG, references=ReferenceCueConfig(enabled=True))
    predictor = Predictor(build_vmad(cfg, tok, train_classes=["screw"]), tok)
    seen = []
    answer = predictor.answer

    def spy(images, texts, **kwargs):
        seen.append(kwargs.get("references"))
        return answer(images, texts, **kwargs)

    predictor.answer = spy
    params = {"progress": False, "batch_size": 2, "mmad": {"questions": str(path)}}
    evaluate_mmad(predictor, parse_evaluate_params(params))
    (memories,) = seen
    template = torch.from_numpy(load_rgb(tmp_path / "DS/obj/train/good/005.png", 32))
    feats = predictor.reference_features(template.permute(2, 0, 1)[None])
    torch.testing.assert_close(memories[0], feats[0].flatten(1).T)
    assert memories[1] is None
    seen.clear()
    off = {**params, "mmad": {"questions": str(path), "references": False}}
    evaluate_mmad(predictor, parse_evaluate_params(off))
    assert seen == [None]


def test_the_words_are_graded_against_the_models_own_mask_and_the_type_probe() -> None:
    """Where the drawn mask is against the truth and against the answer's words; how precise the
    named types are and how many are named; the type head on the true masks apart."""
    drawn = ["center", "top", "top left", "top", "center", "bottom right"]
    probe = [None, None, "scratch", "hole", None, "dent"]
    pred = {**predictions(), "drawn_locations": drawn, "type_probe": probe}
    graded = grade_answers(eval_set(), pred, masks(), TAXONOMY)
    # anomalous rows 2, 3, 5: truth top left, bottom right, bottom right
    assert graded["mask_location_correct"].tolist()[2:4] == [True, False]
    assert graded.loc[5, "mask_location_correct"]
    assert graded.loc[2, "location_follows_mask"] and graded.loc[5, "location_follows_mask"]
    assert pd.isna(graded.loc[3, "location_follows_mask"])  # its answer names no location
    assert graded["probe_type_correct"].tolist()[2:4] == [True, False]
    cfg = parse_evaluate_params(PARAMS)
    report, _, _ = compute_metrics(eval_set(), typed(scored(pred, cfg)), masks(), graded, cfg)
    alpha, beta = report["per_class"]["alpha"], report["per_class"]["beta"]
    assert alpha["mask_location_accuracy"] == 0.5 and beta["mask_location_accuracy"] == 1.0
    assert alpha["location_mask_agreement"] == 1.0
    # alpha: 2 typed defects, 1 named (right): precision 1, named share 1/2
    assert alpha["defect_type_precision"] == 1.0 and alpha["defect_type_named_share"] == 0.5
    assert alpha["type_probe_accuracy"] == 0.5 and beta["type_probe_accuracy"] == 1.0
