from kedro.pipeline import Pipeline, node, pipeline

from .mmad import evaluate_mmad, mmad_mlflow
from .nodes import (
    compute_metrics,
    grade_answers,
    load_ground_truth,
    predict_eval_set,
    select_eval_set,
)
from .reports import class_table_markdown, curve_data, plot_curves, plot_overlays


def create_pipeline(**kwargs) -> Pipeline:
    """Needs a trained model (data/06_models/vmad): `kedro run --pipeline train` first."""
    return pipeline(
        [
            node(
                select_eval_set,
                ["manifest", "splits", "dataset_roots", "taxonomy", "params:evaluate"],
                ["eval_set", "eval_roots"],
                name="select_eval_set",
            ),
            node(
                predict_eval_set,
                ["vmad_model", "eval_set", "eval_roots", "params:evaluate"],
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
                compute_metrics,
                ["eval_set", "eval_predictions", "eval_masks", "params:evaluate", "taxonomy"],
                ["metrics", "metrics_mlflow", "metrics_per_class"],
                name="compute_metrics",
            ),
            node(
                grade_answers,
                ["eval_set", "eval_predictions", "eval_masks", "taxonomy", "params:evaluate"],
                "eval_answers",
                name="grade_answers",
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
                plot_overlays,
                ["eval_set", "eval_predictions", "eval_masks", "eval_roots", "params:evaluate"],
                "overlays",
                name="plot_overlays",
            ),
            node(
                evaluate_mmad,
                ["vmad_model", "params:evaluate"],
                ["mmad_answers", "mmad_metrics"],
                name="evaluate_mmad",
            ),
            node(mmad_mlflow, "mmad_metrics", "mmad_mlflow", name="mmad_mlflow"),
        ],
        tags="evaluate",
    )
