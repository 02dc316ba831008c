from kedro.pipeline import Pipeline, node, pipeline

from vmad_pipeline.pipelines.ingest.pipeline import create_pipeline as ingest
from vmad_pipeline.pipelines.split.pipeline import create_pipeline as split

from .nodes import generate_anomalies, generation_detector, generation_fidelity, train_generator

DATA = ["manifest", "splits", "dataset_roots"]


def create_pipeline(**kwargs) -> Pipeline:
    """`kedro run --pipeline generate` (docs/generation.md), with its upstream data nodes (ingest,
    split) so it runs on a fresh checkout. Its last node reads the trained model (`kedro run
    --pipeline train` first); without one, stop before it:
    `kedro run --pipeline generate --to-nodes generation_fidelity`."""
    return ingest() + split() + generation_nodes()


def generation_nodes() -> Pipeline:
    return pipeline(
        [
            node(
                train_generator,
                [*DATA, "params:generate"],
                ["defect_generator", "generator_curves"],
                name="train_generator",
            ),
            node(
                generate_anomalies,
                ["defect_generator", *DATA, "params:generate"],
                ["generated_anomalies", "generation_index", "generation_overview"],
                name="generate_anomalies",
            ),
            node(
                generation_fidelity,
                ["generated_anomalies", "generation_index", *DATA, "params:generate"],
                ["generation_fidelity", "generation_fidelity_md", "generation_fidelity_mlflow"],
                name="generation_fidelity",
            ),
            node(
                generation_detector,
                [
                    "vmad_model",
                    "generated_anomalies",
                    "generation_index",
                    *DATA,
                    "params:weights",
                    "params:generate",
                    "params:evaluate",
                ],
                ["generation_detector", "generation_detector_md", "generation_detector_mlflow"],
                name="generation_detector",
            ),
        ],
        tags="generate",
    )
