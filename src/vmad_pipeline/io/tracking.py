"""MLflow tracking, the one place outside the pipelines that talks to MLflow: the Kedro datasets
that log curves and the registered model, and the runs the pipelines open (``nested_run``, the
ablation's injected cell tracker; ``start_run``, the train worker's run)."""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError


class MlflowCurvesDataset(AbstractDataset):
    """Logs ``{name: value, [values per step] or {step: value}}`` to the active MLflow run in
    batches.

    kedro-mlflow's history datasets send one request per point; a training curve of a few
    thousand points is sent here with ``log_batch`` (1000 metrics per request, MLflow's limit).
    """

    def __init__(self, *, prefix: str = "", metadata: dict[str, Any] | None = None) -> None:
        self._prefix = prefix
        self.metadata = metadata

    def _save(self, data: dict[str, Any]) -> None:
        import time

        import mlflow
        from mlflow.entities import Metric

        run = mlflow.active_run()
        if run is None:
            return  # tracking disabled for this run
        now = int(time.time() * 1000)
        points = []
        for name, value in data.items():
            if isinstance(value, dict):  # {step: value}: points at chosen steps
                pairs = list(value.items())
            else:
                pairs = list(enumerate(value if isinstance(value, list | tuple) else [value]))
            for step, v in pairs:
                if v is not None and np.isfinite(v):
                    points.append(Metric(f"{self._prefix}{name}", float(v), now, step))
        client = mlflow.MlflowClient()
        for i in range(0, len(points), 1000):
            client.log_batch(run.info.run_id, metrics=points[i : i + 1000])

    def _load(self) -> dict[str, Any]:
        raise DatasetError("MlflowCurvesDataset is write-only; read curves in the MLflow UI")

    def _describe(self) -> dict[str, Any]:
        return {"prefix": self._prefix}


class PyfuncModelDataset(AbstractDataset):
    """Logs the VMAD pyfunc to the active MLflow run and registers it (write-only).

    MLflow's "models from code": the model is ``io/pyfunc_model.py``, logged as a script
    (nothing pickled), with the checkpoint directory as its artifact, the project's package as
    code, an explicit signature, and the node's ``model_config`` (the score rule) and ``metadata``
    (what the model was trained on).
    kedro-mlflow's model dataset takes its logging arguments from the catalog only, so the rule,
    which comes from the parameters, could not reach ``model_config`` through it.
    """

    def __init__(
        self,
        *,
        name: str,
        registered_model_name: str,
        checkpoint: str,
        pip_requirements: list[str],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._name, self._registered = name, registered_model_name
        self._checkpoint, self._pip = checkpoint, list(pip_requirements)
        self.metadata = metadata

    def _save(self, data: dict[str, Any]) -> None:
        from pathlib import Path

        import mlflow

        import vmad_pipeline
        from vmad_pipeline.io import pyfunc

        if mlflow.active_run() is None:
            return  # tracking disabled for this run
        package = Path(vmad_pipeline.__file__).parent
        with warnings.catch_warnings():
            # An input example would make MLflow load and run the model at registration (a 7B
            # model for the real preset); the signature documents the input instead.
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            self._log(mlflow, package, pyfunc, data)

    def _log(self, mlflow, package, pyfunc, data: dict[str, Any]) -> None:
        mlflow.pyfunc.log_model(
            name=self._name,
            python_model=str(package / "io" / "pyfunc_model.py"),
            artifacts={"checkpoint": self._checkpoint},
            code_paths=[str(package)],
            pip_requirements=self._pip,
            model_config=data["model_config"],
            metadata=data.get("metadata"),
            signature=pyfunc.signature(),
            registered_model_name=self._registered,
        )

    def _load(self) -> Any:
        raise DatasetError(
            "the registered model is loaded with mlflow.pyfunc.load_model('models:/vmad/latest')"
        )

    def _describe(self) -> dict[str, Any]:
        return {"name": self._name, "registered_model_name": self._registered}


def nested_run(
    name: str, tags: dict[str, str], params: dict[str, Any], metrics: dict[str, float]
) -> None:
    """One MLflow run named ``name``, nested in the active run if any, holding ``tags``,
    ``params`` and ``metrics`` (an ``ablation.run.CellTracker``: one run per ablation cell)."""
    import mlflow

    with mlflow.start_run(run_name=name, nested=mlflow.active_run() is not None):
        mlflow.set_tags(tags)
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)


def start_run(run_name: str) -> AbstractContextManager[Any]:
    """A new MLflow run named ``run_name``, ended when its ``with`` block exits (the train
    worker's rank 0 saves its outputs inside it, so the catalog's MLflow datasets log there)."""
    import mlflow

    return mlflow.start_run(run_name=run_name)


# A run's process, as tags: how a later run knows that a RUNNING run's process is gone.
PID_TAG, HOST_TAG, ENDED_TAG = "vmad.pid", "vmad.host", "vmad.ended_by"


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)  # no signal sent: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def end_orphaned_runs() -> list[str]:
    """Tag the active MLflow run with this process (``vmad.pid``, ``vmad.host``), and end as
    KILLED every other run of its experiment that is still RUNNING although its process, on this
    host, is gone (a ``kill -9``, a crash of the machine's Python): without this it stayed
    RUNNING forever. Each gets a ``vmad.ended_by`` tag naming this run. Runs of other hosts, and
    runs whose process may still live, are left alone. Returns the ids ended."""
    import os
    import socket

    import mlflow
    from mlflow.entities import RunStatus

    active = mlflow.active_run()
    if active is None:
        return []
    host = socket.gethostname()
    mlflow.set_tags({PID_TAG: str(os.getpid()), HOST_TAG: host})
    client = mlflow.MlflowClient()
    running = client.search_runs(
        [active.info.experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
    )
    ended = []
    for run in running:
        pid = run.data.tags.get(PID_TAG, "")
        if run.info.run_id == active.info.run_id or not pid.isdigit() or _alive(int(pid)):
            continue
        note = f"run {active.info.run_id}: its process {pid} on {host} was gone"
        client.set_tag(run.info.run_id, ENDED_TAG, note)
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
        ended.append(run.info.run_id)
    return ended
