"""The predict pipeline."""


def create_pipeline(**kwargs):
    """Kedro's entry point (imported on call, like the other pipelines)."""
    from .pipeline import create_pipeline as create

    return create(**kwargs)
