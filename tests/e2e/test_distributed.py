"""Training over several processes through the documented commands: `kedro run` launching its
own workers, and `torchrun` running the worker entry point (what each node of a cluster runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers.project import SMALL, make_project, run, write_local_parameters

from vmad_pipeline.ablation.plan import deep_merge

TWO = deep_merge(SMALL, {"train": {"engine": {"processes": 2}}})


@pytest.mark.slow
def test_kedro_run_launches_two_workers(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run(project, "train", TWO)
    summary = json.loads((project / "data/08_reporting/training_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps_this_run"] == SMALL["train"]["steps"]
    assert (project / "data/06_models/vmad/adapter/adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_torchrun_runs_the_worker_entry_point(tmp_path):
    """The multi-node recipe on one node: tokenizer by kedro, training by torchrun x 2, rank 0
    writing the outputs through the catalog, then the registration by kedro."""
    project = make_project(tmp_path)
    write_local_parameters(project, SMALL)
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)

    def sh(*cmd):
        proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        return proc

    kedro = [sys.executable, "-m", "kedro", "run", "--pipeline", "train"]
    sh(*kedro, "--to-nodes", "train_expert")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    sh(*torchrun, "--nproc-per-node", "2", "-m", "vmad_pipeline.pipelines.train.worker")
    summary = json.loads((project / "data/08_reporting/training_summary.json").read_text())
    assert summary["processes"] == 2
    sh(*kedro, "--from-nodes", "register_model")
