"""The training worker for runs over several machines: one command per node, the same
parameters everywhere (docs/training.md)::

    kedro run --pipeline train --to-nodes train_expert,train_generator
                          # once: data, split, tokenizer, the anomaly expert (stage 1) and the
                          # defect generator (train.synthesis: generated | both)
    torchrun --nnodes 2 --node-rank $NODE --nproc-per-node 8 \\
        --rdzv-backend c10d --rdzv-endpoint $HEAD:29500 \\
        -m vmad_pipeline.pipelines.train.worker [--env ENV] [--params k=v,...]
    kedro run --pipeline train --from-nodes register_model       # once: register the model

Every rank loads the train node's inputs from the catalog and trains its share; rank 0 alone
writes the checkpoint, the curves and the summary through the catalog, and logs the curves to
an MLflow run. On one machine ``kedro run --pipeline train`` launches its workers itself.
"""

from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from kedro.framework.cli.utils import _split_params
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default=None)
    parser.add_argument("--params", default="", help="as kedro run --params")
    args = parser.parse_args(argv)
    params = _split_params(None, None, args.params) if args.params else {}
    project = Path.cwd()
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=args.env, runtime_params=params) as session:
        catalog = session.load_context().catalog
        train(catalog)


def train(catalog) -> None:
    """Train this rank's share; rank 0 writes the outputs. The inputs and outputs are the train
    pipeline's ``train_model`` node's, loaded and saved by name through the catalog."""
    from vmad_pipeline.pipelines.train.pipeline import training_nodes

    (step,) = training_nodes().filter(node_names=["train_model"]).nodes
    args = inspect.signature(step.func).parameters  # in the order of the node's inputs
    # {}: stage 1 and the defect generator from their caches (or trained here in one process)
    given = {"expert": {}, "generator": {}}
    inputs = {
        arg: given[arg] if arg in given else catalog.load(name)
        for arg, name in zip(args, step.inputs, strict=True)
    }
    outputs = step.func(**inputs)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from vmad_pipeline.io.tracking import start_run

    with start_run("train-worker"):
        for name, value in zip(step.outputs, outputs, strict=True):
            catalog.save(name, value)


if __name__ == "__main__":
    main()
