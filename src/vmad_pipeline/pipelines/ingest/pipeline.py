from kedro.pipeline import Pipeline, node, pipeline

from .nodes import (
    accept_manifest,
    apply_taxonomy,
    generate_synthetic_data,
    read_sources,
    validate_manifest,
)


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                generate_synthetic_data,
                "params:ingest.synthetic",
                "synthetic_images",
                name="generate_synthetic",
            ),
            node(
                read_sources,
                ["synthetic_images", "params:ingest"],
                ["manifest_raw", "dataset_roots"],
                name="read_sources",
            ),
            node(
                apply_taxonomy,
                ["manifest_raw", "taxonomy"],
                "manifest_unvalidated",
                name="apply_taxonomy",
            ),
            node(
                validate_manifest,
                ["manifest_unvalidated", "dataset_roots"],
                "validation_report",
                name="validate_manifest",
            ),
            node(
                accept_manifest,
                ["manifest_unvalidated", "validation_report"],
                "manifest",
                name="accept_manifest",
            ),
        ],
        tags="ingest",
    )
