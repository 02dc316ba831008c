"""The project's hooks: parameters checked before anything runs, reports of another tree kept
apart, run names and tags that kedro-mlflow does not set, and MLflow runs that end as what they
were when a signal stops them."""

from __future__ import annotations

import logging
import signal
import subprocess
from collections.abc import Callable
from typing import Any

from kedro.framework.hooks import hook_impl

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.configs.ablation import parse_ablation_params
from vmad_pipeline.configs.annotate import parse_annotate_params
from vmad_pipeline.configs.base import from_dict
from vmad_pipeline.configs.evaluate import parse_evaluate_params
from vmad_pipeline.configs.generate import parse_generate_params
from vmad_pipeline.configs.ingest import parse_ingest_params
from vmad_pipeline.configs.model import WeightsConfig
from vmad_pipeline.configs.predict import parse_predict_params
from vmad_pipeline.configs.profile import parse_profile_params
from vmad_pipeline.configs.split import parse_split_params
from vmad_pipeline.configs.train import parse_train_params, run_tags
from vmad_pipeline.datasets.manifest import manifest_hash

log = logging.getLogger(__name__)
REPORTS = "data/08_reporting/"


def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when tracked files have uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def run_name(run_params: dict[str, Any]) -> str:
    """An MLflow run is named by the pipeline it ran (``default`` for ``kedro run``)."""
    name = run_params.get("pipeline_name") or run_params.get("pipeline_names")
    if isinstance(name, list | tuple):
        name = "+".join(name) if name else None
    return name if name and name != "__default__" else "default"


def used_blocks(pipeline) -> set[str]:
    """The top-level parameter blocks a pipeline's nodes read (``params:train.model`` -> train)."""
    return {
        name.split(":", 1)[1].split(".", 1)[0]
        for name in pipeline.all_inputs()
        if name.startswith("params:")
    }


# --------------------------------------------------------------------------- parameter checks
# Each parses its block into its dataclass (and runs what else can be known before anything runs:
# the sources' reader options, every ablation cell), raising ConfigError naming the bad key.


def _ingest(params: dict[str, Any]) -> None:
    from vmad_pipeline.datasets.registry import source_roots  # each source's reader options

    cfg = parse_ingest_params(params.get("ingest"))
    source_roots(cfg.sources, "synthetic")


def _ablation(params: dict[str, Any]) -> None:
    from vmad_pipeline.ablation.plan import plan_ablation  # validates every cell's parameters

    plan_ablation(
        parse_ablation_params(params.get("ablation")),
        params.get("train") or {},
        params.get("evaluate") or {},
        params.get("weights") or {},
    )


BLOCK_CHECKS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "ingest": _ingest,
    "annotate": lambda p: parse_annotate_params(p.get("annotate")),
    "split": lambda p: parse_split_params(p.get("split")),
    "train": lambda p: parse_train_params(p.get("train") or {}, p.get("weights")),
    "weights": lambda p: from_dict(WeightsConfig, p.get("weights"), "weights"),
    "evaluate": lambda p: parse_evaluate_params(p.get("evaluate")),
    "predict": lambda p: parse_predict_params(p.get("predict")),
    "profile": lambda p: parse_profile_params(p.get("profile")),
    "generate": lambda p: parse_generate_params(p.get("generate")),
    "ablation": _ablation,
}


def check_parameters(params: dict[str, Any], blocks: set[str], runtime: dict[str, Any]) -> None:
    """Parse every block in ``blocks`` into its dataclass (a bad key or value anywhere, nested
    blocks included, raises ConfigError naming it), and refuse top-level ``--params`` keys that
    name no block."""
    unknown = sorted(set(runtime) - set(BLOCK_CHECKS))
    if unknown:
        raise ConfigError(
            f"--params: unknown parameter block(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(BLOCK_CHECKS))}"
        )
    for block in sorted(blocks & set(BLOCK_CHECKS)):
        BLOCK_CHECKS[block](params)


def report_folder(params: dict[str, Any]) -> str:
    """Where an evaluating run's reports go: data/08_reporting/, or, evaluating another tree
    (``evaluate.dataset.root``), data/08_reporting/external/<evaluate.dataset.name>/."""
    dataset = (params.get("evaluate") or {}).get("dataset") or {}
    if not dataset.get("root"):
        return REPORTS
    return f"{REPORTS}external/{dataset.get('name') or 'external'}/"


def external_reports(
    catalog,
    conf_catalog: dict[str, Any],
    credentials: dict[str, Any],
    outputs: set[str],
    folder: str,
) -> list[str]:
    """Point the report datasets among ``outputs`` (files under data/08_reporting/ in the catalog
    configuration ``conf_catalog``) at ``folder`` (:func:`report_folder`), so evaluating another
    tree never overwrites the default run's reports. Returns the datasets moved."""
    from kedro.io import DataCatalog

    moved = []
    for ds_name in sorted(outputs & set(conf_catalog)):
        new = _relocate(conf_catalog[ds_name], folder)
        if new == conf_catalog[ds_name]:
            continue
        quiet = logging.getLogger("kedro.io.data_catalog")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # "Replacing dataset ...": on purpose here
        try:
            catalog[ds_name] = DataCatalog.from_config({ds_name: new}, credentials).get(ds_name)
        finally:
            quiet.setLevel(level)
        moved.append(ds_name)
    return moved


def _relocate(config: Any, folder: str) -> Any:
    """``config`` with every file path under data/08_reporting/ (relative, or absolute as Kedro
    makes them) moved under ``folder`` (relative to the same project)."""
    if isinstance(config, dict):
        return {
            k: _moved(v, folder) if k in ("filepath", "path") else _relocate(v, folder)
            for k, v in config.items()
        }
    return config


def _moved(path: Any, folder: str) -> Any:
    if not isinstance(path, str):
        return path
    at = 0 if path.startswith(REPORTS) else path.find("/" + REPORTS) + 1
    return (
        path[:at] + folder + path[at + len(REPORTS) :] if at or path.startswith(REPORTS) else path
    )


class ParamsCheckHook:
    """Before the first node (and before kedro-mlflow opens a run: ``tryfirst``): every parameter
    block the run reads is parsed, and an evaluation of another tree writes its reports apart."""

    @hook_impl
    def after_catalog_created(self, catalog, conf_catalog, conf_creds, **kwargs) -> None:
        self._conf = (dict(conf_catalog or {}), dict(conf_creds or {}))

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        params = catalog.load("parameters")
        check_parameters(params, used_blocks(pipeline), run_params.get("runtime_params") or {})
        folder = report_folder(params)
        if "evaluate" in used_blocks(pipeline) and folder != REPORTS:
            outputs = pipeline.only_nodes_with_tags("evaluate").all_outputs()
            conf, creds = getattr(self, "_conf", ({}, {}))
            moved = external_reports(catalog, conf, creds, outputs, folder)
            log.info("evaluating another tree: %d reports go to %s", len(moved), folder)


class RunStatusHook:
    """An MLflow run stopped by SIGTERM or Ctrl-C (SIGINT) ends as KILLED, with what it had
    logged; without this, SIGTERM left it RUNNING forever and Ctrl-C marked it FINISHED (MLflow's
    exit handler ends an open run as FINISHED)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._previous = {}
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._stop)
            except ValueError:  # not the main thread (a run inside a worker): leave it
                pass

    def _stop(self, signum, frame) -> None:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run(status="KILLED")
        log.warning("stopped by %s; MLflow run(s) ended as KILLED", signal.Signals(signum).name)
        self._restore()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _restore(self) -> None:
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler)
        self._previous = {}

    @hook_impl
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        self._restore()

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        self._restore()


class RunTagsHook:
    """Names the active MLflow run after its pipeline and tags it with the git commit, the hash
    of the data manifest (``dataset_hash``) and, when it trains, the model's identity
    (``configs.train.run_tags``); its process too, so that a later run ends it as KILLED if the
    process dies without ending it (``io.tracking.end_orphaned_runs``)."""

    @staticmethod
    def _tag(**tags: str) -> None:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.set_tags(tags)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._first = {"git_commit": git_commit(), "mlflow.runName": run_name(run_params)}

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async, run_id) -> None:
        first = getattr(self, "_first", None)
        if first:  # kedro-mlflow's run exists from here on
            self._tag(**first)
            self._first = None
            from vmad_pipeline.io.tracking import end_orphaned_runs

            for run_id in end_orphaned_runs():
                log.warning(
                    "MLflow run %s was RUNNING with its process gone: ended as KILLED", run_id
                )
        if node.name == "train_model" and "params:train" in inputs:
            self._tag(**run_tags(inputs["params:train"]))

    @hook_impl
    def after_dataset_loaded(self, dataset_name, data, node) -> None:
        if dataset_name == "manifest":
            self._tag(dataset_hash=manifest_hash(data))

    @hook_impl
    def after_dataset_saved(self, dataset_name, data, node) -> None:
        if dataset_name == "manifest":
            self._tag(dataset_hash=manifest_hash(data))


class RunSummaryHook:
    """At the end of a run that evaluated, a short summary on stdout
    (``evaluation.summary.run_summary``): what a user would otherwise look for among the
    catalog's log lines. A summary that cannot be made is a warning, never a failed run."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._saved: dict[str, Any] = {}

    @hook_impl
    def after_dataset_saved(self, dataset_name, data, node) -> None:
        if dataset_name in ("metrics", "shots_metrics") and hasattr(self, "_saved"):
            self._saved[dataset_name] = data

    @hook_impl
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        saved = getattr(self, "_saved", {})
        if "metrics" not in saved:
            return
        try:
            from vmad_pipeline.evaluation.summary import run_summary

            where = report_folder(catalog.load("parameters"))
            lines = run_summary(saved["metrics"], saved.get("shots_metrics"), where)
        except Exception as err:  # noqa: BLE001 - a summary must never fail a finished run
            log.warning("no run summary: %s", err)
            return
        print("\n".join(["", *lines]), flush=True)
