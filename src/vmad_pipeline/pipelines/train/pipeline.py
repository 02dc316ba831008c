from kedro.pipeline import Node, Pipeline, node, pipeline

from vmad_pipeline.pipelines.annotate.pipeline import create_pipeline as annotate
from vmad_pipeline.pipelines.ingest.pipeline import create_pipeline as ingest
from vmad_pipeline.pipelines.split.pipeline import create_pipeline as split

from .nodes import fit_tokenizer, package_model, train_expert, train_generator, train_model


def tokenizer_node(output: str = "tokenizer", name: str = "fit_tokenizer") -> Node:
    """The tokenizer of the training conversations (the ablation's cells share one too)."""
    return node(
        fit_tokenizer,
        ["manifest", "splits", "riad_qa", "params:train", "params:weights"],
        output,
        name=name,
    )


def training_nodes() -> Pipeline:
    return pipeline(
        [
            tokenizer_node(),
            node(
                train_expert,
                [
                    "manifest",
                    "splits",
                    "dataset_roots",
                    "riad_qa",
                    "tokenizer",
                    "params:train",
                    "params:weights",
                ],
                "anomaly_expert",
                name="train_expert",
            ),
            node(
                train_generator,
                [
                    "manifest",
                    "splits",
                    "dataset_roots",
                    "params:train",
                    "params:weights",
                    "params:generate",
                ],
                "defect_generator",
                name="train_generator",
            ),
            node(
                train_model,
                [
                    "manifest",
                    "splits",
                    "dataset_roots",
                    "riad_qa",
                    "tokenizer",
                    "anomaly_expert",
                    "defect_generator",
                    "params:train",
                    "params:weights",
                    "params:evaluate",
                    "params:generate",
                ],
                ["vmad_model", "training_curves", "training_curves_table", "training_summary"],
                name="train_model",
            ),
            node(
                package_model,
                ["vmad_model", "params:evaluate"],
                "vmad_registered",
                name="register_model",
            ),
        ],
        tags="train",
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Training with its upstream data nodes, so it runs on a fresh checkout.

    `dvc repro` runs only this pipeline's own nodes (``--tags train``).
    """
    return ingest() + annotate() + split() + training_nodes()
