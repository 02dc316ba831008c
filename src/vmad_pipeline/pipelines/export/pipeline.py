from kedro.pipeline import Pipeline, node, pipeline

from .nodes import merge_adapter


def create_pipeline(**kwargs) -> Pipeline:
    """Needs a trained model (data/06_models/vmad): `kedro run --pipeline train` first."""
    return pipeline(
        [
            node(
                merge_adapter,
                ["vmad_model", "params:weights"],
                "vmad_export",
                name="merge_adapter",
            )
        ],
        tags="export",
    )
