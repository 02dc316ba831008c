from kedro.pipeline import Pipeline, node, pipeline

from .nodes import make_split


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [node(make_split, ["manifest", "params:split"], "splits", name="make_split")],
        tags="split",
    )
