"""A copy of the Kedro project in a temporary folder, a very small configuration, and a runner
that opens one KedroSession per run (the end-to-end tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from helpers import REPO

SMALL = {
    "ingest": {
        "progress": False,
        "synthetic": {
            "image_size": 32,
            "classes": ["woven_cloth", "carpet", "washer", "screw", "pcb"],
            "defects_per_class": 2,
            "n_train_good": 2,
            "n_test_good": 2,
            "n_test_defect": 2,
        },
    },
    "annotate": {"progress": False},
    "split": {"test_classes": ["washer", "pcb"]},
    "train": {
        "steps": 3,
        "warmup_steps": 1,
        "batch_size": 4,
        "progress": False,
        "model": {
            "vision": {
                "image_size": 32,
                "patch_size": 8,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
            },
            "llm": {"hidden_size": 32, "intermediate_size": 64, "num_heads": 2},
            "sam": {
                "image_size": 32,
                "embed_dim": 32,
                "depth": 1,
                "num_heads": 2,
                "prompt_dim": 16,
                "decoder_mlp_dim": 32,
                "decoder_heads": 2,
            },
            # a 32 px image: a grid of 8 patches, a radius of 1 leaves each patch the rest
            "self_comparison": {"stride": 4, "radius": 1},
        },
    },
    "evaluate": {"eval_size": 32, "max_new_tokens": 3, "n_overlays": 1, "progress": False},
}


def make_project(tmp_path: Path) -> Path:
    """A copy of the project (config + package code) in a temporary folder."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "pyproject.toml", project)
    shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    # An absolute store per project: MLflow caches stores by URI, so the shipped relative URI
    # would reach an earlier test's database from a later session in the same process.
    mlflow_yml = project / "conf" / "base" / "mlflow.yml"
    mlflow_yml.write_text(
        mlflow_yml.read_text().replace(
            "sqlite:///mlruns/mlflow.db", f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
        )
    )
    shutil.copytree(
        REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    return project


def run(project: Path, pipeline: str | None, params: dict):
    import mlflow

    bootstrap_project(project)
    try:
        with KedroSession.create(project_path=project, runtime_params=params) as session:
            return session.run(pipeline_names=[pipeline] if pipeline else None)
    finally:
        # Several sessions in one process (unlike `kedro run`): start each with no active run.
        while mlflow.active_run():
            mlflow.end_run()


def write_local_parameters(project: Path, overrides: dict) -> None:
    """conf/local/parameters.yml: conf/base's parameters with ``overrides`` deep-merged, whole
    blocks (Kedro lets a local top-level key replace the base one), for runs of the `kedro`
    command itself."""
    import yaml

    from vmad_pipeline.ablation.plan import deep_merge

    params: dict = {}
    for path in sorted((project / "conf" / "base").glob("parameters_*.yml")):
        params |= yaml.safe_load(path.read_text())
    merged = deep_merge(params, overrides)
    local = {k: merged[k] for k in overrides}
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(local))
