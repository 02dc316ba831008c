"""The generate pipeline (docs/generation.md)."""


def create_pipeline(**kwargs):
    """Kedro's entry point, imported on call (as the other pipelines' are)."""
    from .pipeline import create_pipeline as create

    return create(**kwargs)
