from kedro.pipeline import Pipeline, node, pipeline

from .nodes import (
    accept_manifest,
    generate_synthetic_data,
    map_defects,
    read_sources,
    validate_manifest,
)


def create_pipeline(**kwargs) -> Pipeline:
    # Only accept_manifest's outputs are persisted (manifest, dataset_roots, ingest_quarantine):
    # a run that stops on bad input or a failed expectation writes none of them.
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
                ["manifest_raw", "dataset_roots_unvalidated", "ingest_problems"],
                name="read_sources",
            ),
            node(
                map_defects,
                ["manifest_raw", "ingest_problems", "taxonomy", "params:ingest"],
                ["manifest_unvalidated", "ingest_quarantine_unvalidated"],
                name="map_defects",
            ),
            node(
                validate_manifest,
                [
                    "manifest_unvalidated",
                    "dataset_roots_unvalidated",
                    "ingest_quarantine_unvalidated",
                    "params:ingest",
                ],
                ["manifest_validated", "ingest_quarantine_validated", "validation_report"],
                name="validate_manifest",
            ),
            node(
                accept_manifest,
                [
                    "manifest_validated",
                    "dataset_roots_unvalidated",
                    "ingest_quarantine_validated",
                    "validation_report",
                ],
                ["manifest", "dataset_roots", "ingest_quarantine"],
                name="accept_manifest",
            ),
        ],
        tags="ingest",
    )
