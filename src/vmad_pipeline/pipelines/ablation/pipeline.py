from kedro.pipeline import Pipeline, node, pipeline

from vmad_pipeline.ablation.report import report_ablation
from vmad_pipeline.pipelines.annotate.pipeline import create_pipeline as annotate
from vmad_pipeline.pipelines.ingest.pipeline import create_pipeline as ingest
from vmad_pipeline.pipelines.split.pipeline import create_pipeline as split
from vmad_pipeline.pipelines.train.pipeline import tokenizer_node

from .nodes import plan_ablation, run_ablation


def ablation_nodes() -> Pipeline:
    return pipeline(
        [
            node(
                plan_ablation,
                [
                    "params:ablation",
                    "params:train",
                    "params:evaluate",
                    "params:weights",
                    "params:generate",
                ],
                "ablation_plan",
                name="plan_ablation",
            ),
            tokenizer_node("ablation_tokenizer", "ablation_fit_tokenizer"),
            node(
                run_ablation,
                [
                    "ablation_plan",
                    "ablation_cell_store",
                    "manifest",
                    "splits",
                    "dataset_roots",
                    "riad_qa",
                    "taxonomy",
                    "ablation_tokenizer",
                    "params:weights",
                    "params:ablation",
                ],
                "ablation_results",
                name="run_ablation",
            ),
            node(
                report_ablation,
                "ablation_results",
                ["ablation_summary", "ablation_metrics", "ablation_table", "ablation_figure"],
                name="report_ablation",
            ),
        ],
        tags="ablation",
    )


def create_pipeline(**kwargs) -> Pipeline:
    """The ablation with its upstream data nodes, so it runs on a fresh checkout.

    `dvc repro` runs only this pipeline's own nodes (``--tags ablation``).
    """
    return ingest() + annotate() + split() + ablation_nodes()
