from kedro.pipeline import Pipeline, node, pipeline

from .nodes import build_profile


def create_pipeline(**kwargs) -> Pipeline:
    """k normal images of one product -> a stored profile (docs/references.md). Needs a trained
    model that reads references (data/06_models/vmad)."""
    return pipeline(
        [
            node(
                build_profile,
                ["vmad_model", "params:weights", "params:profile", "params:evaluate"],
                ["reference_profile", "profile_summary", "profile_mlflow"],
                name="build_profile",
            )
        ],
        tags="profile",
    )
