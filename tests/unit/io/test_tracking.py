"""MLflow runs whose process died while RUNNING are ended as KILLED by the next run
(io/tracking.end_orphaned_runs; issue 27: a SIGKILLed training left its run RUNNING forever)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import mlflow

from vmad_pipeline.io.tracking import ENDED_TAG, HOST_TAG, PID_TAG, end_orphaned_runs


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _running(client, experiment, tags) -> str:
    """A run left RUNNING, as a killed process leaves it."""
    return client.create_run(experiment, tags=tags).info.run_id


def test_a_run_whose_process_is_gone_is_ended_as_killed_and_the_others_stay():
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("orphans")
    host = socket.gethostname()
    dead = _running(client, experiment, {PID_TAG: str(_dead_pid()), HOST_TAG: host})
    alive = _running(client, experiment, {PID_TAG: str(os.getppid()), HOST_TAG: host})
    elsewhere = _running(client, experiment, {PID_TAG: str(_dead_pid()), HOST_TAG: "other-host"})
    untagged = _running(client, experiment, {})
    with mlflow.start_run(experiment_id=experiment) as run:
        assert end_orphaned_runs() == [dead]
        tags = client.get_run(run.info.run_id).data.tags
        assert tags[PID_TAG] == str(os.getpid()) and tags[HOST_TAG] == host
    assert client.get_run(dead).info.status == "KILLED"
    assert run.info.run_id in client.get_run(dead).data.tags[ENDED_TAG]
    for other in (alive, elsewhere, untagged):
        assert client.get_run(other).info.status == "RUNNING"
    assert end_orphaned_runs() == []  # no active run: nothing to do
