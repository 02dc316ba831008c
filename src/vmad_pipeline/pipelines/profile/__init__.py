"""The profile pipeline: normal images of one product -> a stored profile."""


def create_pipeline(**kwargs):
    """Kedro's entry point. Imported on call, so that importing this package's nodes does not
    import the pipelines it composes (each DVC stage depends on what its own nodes import)."""
    from .pipeline import create_pipeline as create

    return create(**kwargs)
