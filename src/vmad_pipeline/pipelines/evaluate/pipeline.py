from kedro.pipeline import Pipeline, node, pipeline

from vmad_pipeline.evaluation.figures import class_table_markdown, plot_curves
from vmad_pipeline.evaluation.mmad import mmad_mlflow
from vmad_pipeline.evaluation.report import headline_metrics

from .nodes import (
    compute_metrics,
    curve_data,
    evaluate_mmad,
    grade_answers,
    load_detector,
    load_ground_truth,
    model_shot_metrics,
    plot_overlays,
    plot_shot_roc,
    predict_eval_set,
    reference_metrics,
    select_eval_set,
    shot_metrics,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Needs a trained model (data/06_models/vmad): `kedro run --pipeline train` first."""
    return pipeline(_scoring_nodes() + _report_nodes(), tags="evaluate")


def _scoring_nodes() -> list:
    """The test images, the model loaded once, its predictions, the graded answers, metrics."""
    return [
        node(
            select_eval_set,
            ["manifest", "splits", "dataset_roots", "taxonomy", "vmad_model", "params:evaluate"],
            ["eval_set", "eval_roots"],
            name="select_eval_set",
        ),
        node(
            load_detector,
            ["vmad_model", "params:weights", "params:evaluate", "eval_set"],
            "eval_detector",
            name="load_detector",
        ),
        node(
            predict_eval_set,
            ["eval_detector", "eval_set", "eval_roots", "params:evaluate"],
            "eval_predictions",
            name="predict_eval_set",
        ),
        node(
            load_ground_truth,
            ["eval_set", "eval_roots", "params:evaluate"],
            "eval_masks",
            name="load_ground_truth",
        ),
        node(
            grade_answers,
            ["eval_set", "eval_predictions", "eval_masks", "taxonomy", "riad_qa"],
            ["eval_graded", "eval_answers"],
            name="grade_answers",
        ),
        node(
            model_shot_metrics,
            [
                "eval_detector",
                "eval_set",
                "eval_roots",
                "eval_masks",
                "manifest",
                "taxonomy",
                "params:evaluate",
            ],
            ["model_shots", "model_shots_mlflow"],
            name="model_shot_metrics",
        ),
        node(
            compute_metrics,
            [
                "eval_set",
                "eval_predictions",
                "eval_masks",
                "eval_graded",
                "model_shots",
                "params:evaluate",
            ],
            ["metrics", "metrics_mlflow", "metrics_per_class"],
            name="compute_metrics",
        ),
    ]


def _report_nodes() -> list:
    """Tables, curves, figures and MMAD, from what the scoring nodes computed."""
    return [
        node(headline_metrics, "metrics", "headline_metrics", name="headline_metrics"),
        node(
            reference_metrics,
            ["eval_set", "eval_roots", "eval_masks", "params:evaluate"],
            ["reference_metrics", "reference_mlflow"],
            name="reference_metrics",
        ),
        node(
            shot_metrics,
            ["eval_set", "eval_roots", "eval_masks", "manifest", "params:evaluate"],
            ["shots_metrics", "shots_mlflow"],
            name="shot_metrics",
        ),
        node(
            class_table_markdown,
            ["metrics_per_class", "metrics"],
            "metrics_per_class_md",
            name="class_table_markdown",
        ),
        node(
            curve_data,
            ["eval_set", "eval_predictions", "eval_masks", "params:evaluate"],
            ["roc_curves", "pr_curves", "pro_curves"],
            name="curve_data",
        ),
        node(
            plot_curves,
            ["roc_curves", "pr_curves", "pro_curves", "metrics"],
            ["roc_figure", "pr_figure", "pro_figure"],
            name="plot_curves",
        ),
        node(
            plot_shot_roc,
            ["eval_set", "eval_predictions", "metrics"],
            "shots_roc_figure",
            name="plot_shot_roc",
        ),
        node(
            plot_overlays,
            ["eval_set", "eval_predictions", "eval_masks", "eval_roots", "params:evaluate"],
            "overlays",
            name="plot_overlays",
        ),
        node(
            evaluate_mmad,
            ["eval_detector", "params:evaluate"],
            ["mmad_answers", "mmad_metrics"],
            name="evaluate_mmad",
        ),
        node(mmad_mlflow, "mmad_metrics", "mmad_mlflow", name="mmad_mlflow"),
    ]
