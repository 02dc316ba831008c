from kedro.pipeline import Pipeline, node, pipeline

from .nodes import predict_images


def create_pipeline(**kwargs) -> Pipeline:
    """`kedro run --pipeline predict`: the trained model on new images (docs/predict.md)."""
    return pipeline(
        [
            node(
                predict_images,
                [
                    "vmad_model",
                    "prediction_store",
                    "taxonomy",
                    "params:predict",
                    "params:evaluate",
                    "params:weights",
                ],
                "prediction_summary",
                name="predict_images",
            )
        ],
        tags="predict",
    )
