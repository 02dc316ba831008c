from kedro.pipeline import Pipeline, node, pipeline

from .nodes import cross_category_split


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                cross_category_split,
                ["manifest", "params:split"],
                "splits",
                name="cross_category_split",
            )
        ],
        tags="split",
    )
