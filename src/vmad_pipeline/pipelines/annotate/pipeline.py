from kedro.pipeline import Pipeline, node, pipeline

from .nodes import assemble_riad


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                assemble_riad,
                ["manifest", "dataset_roots", "taxonomy", "params:annotate"],
                ["riad_coco", "riad_qa"],
                name="assemble_riad",
            )
        ],
        tags="annotate",
    )
