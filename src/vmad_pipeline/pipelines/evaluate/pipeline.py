from kedro.pipeline import Pipeline, node, pipeline

from .nodes import (
    compute_metrics,
    load_ground_truth,
    plot_overlays,
    predict_eval_set,
    select_eval_set,
)


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
                ["eval_set", "eval_predictions", "eval_masks", "params:evaluate"],
                ["metrics", "metrics_mlflow", "metrics_per_class"],
                name="compute_metrics",
            ),
            node(
                plot_overlays,
                ["eval_set", "eval_predictions", "eval_masks", "eval_roots", "params:evaluate"],
                "overlays",
                name="plot_overlays",
            ),
        ],
        tags="evaluate",
    )
