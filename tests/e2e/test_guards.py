"""What must never pass silently, through real runs (issue 11): parameters checked before anything
is written, a model never evaluated as zero-shot on its training classes, another tree's reports
kept apart from the default's, MLflow runs that end as KILLED when a signal stops them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers.project import SMALL, make_project, run, write_local_parameters
from PIL import Image

from vmad_pipeline.ablation.plan import deep_merge
from vmad_pipeline.configs import ConfigError
from vmad_pipeline.evaluation.eval_set import SeenClassError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project after one default run (SMALL: trained on woven_cloth, carpet, screw; tested on
    washer and pcb)."""
    import mlflow

    tmp = tmp_path_factory.mktemp("guards")
    project = make_project(tmp)
    old = os.getcwd()
    os.chdir(project)
    uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        run(project, None, SMALL)
        yield project
    finally:
        os.chdir(old)
        if uri:
            os.environ["MLFLOW_TRACKING_URI"] = uri
        while mlflow.active_run():
            mlflow.end_run()


def kedro_run(project, env: dict, *args: str) -> subprocess.CompletedProcess:
    """`kedro run ARGS` in ``project`` as a user runs it (its output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "kedro", "run", *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def reports(project):
    return project / "data" / "08_reporting"


def snapshot(project) -> dict[str, bytes]:
    files = [project / "data" / "05_model_input" / "splits.json", reports(project) / "metrics.json"]
    return {f.name: f.read_bytes() for f in files}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"split": {"seed": 3}, "train": {"stepz": 5}}, r"train\.stepz: unknown parameter"),
        ({"trian": {"steps": 5}}, r"unknown parameter block\(s\) trian; known: .*train"),
        ({"evaluate": {"dataset": {"roots": "/x"}}}, r"evaluate\.dataset\.roots: unknown"),
    ],
)
def test_bad_parameters_stop_the_run_before_anything_is_written(
    trained, monkeypatch, params, message
):
    monkeypatch.chdir(trained)
    before = snapshot(trained)
    with pytest.raises(ConfigError, match=message):
        run(trained, None, deep_merge(SMALL, params))
    assert snapshot(trained) == before  # splits.json and the reports as they were


def test_a_split_changed_after_training_stops_evaluate_before_predicting(trained, monkeypatch):
    monkeypatch.chdir(trained)
    changed = deep_merge(SMALL, {"split": {"test_classes": ["screw", "pcb"]}})
    run(trained, "split", changed)  # the split changes; the model does not
    before = (reports(trained) / "metrics.json").read_bytes()
    with pytest.raises(SeenClassError, match="screw were training classes"):
        run(trained, "evaluate", changed)
    assert (reports(trained) / "metrics.json").read_bytes() == before
    run(trained, "split", SMALL)  # back to the split the model was trained with


def test_another_trees_reports_go_beside_the_defaults(trained, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(trained)
    other = tmp_path / "other"
    for i, sub in enumerate(["good", "dent", "good", "dent"]):
        rng = np.random.default_rng(i)
        path = other / "gadget" / "test" / sub / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        if sub == "dent":
            mask = np.zeros((40, 40), np.uint8)
            mask[5:15, 5:15] = 255
            gt = other / "gadget" / "ground_truth" / "dent" / f"{i:03d}_mask.png"
            gt.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(gt)
    before = {p: p.read_bytes() for p in reports(trained).glob("*") if p.is_file()}
    params = deep_merge(SMALL, {"evaluate": {"dataset": {"root": str(other), "name": "other"}}})
    run(trained, "evaluate", params)
    assert "Reports: data/08_reporting/external/other/" in capsys.readouterr().out  # the summary
    assert {p: p.read_bytes() for p in before} == before  # the default reports untouched
    external = reports(trained) / "external" / "other"
    metrics = json.loads((external / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"gadget"} and (external / "answers.csv").is_file()
    assert (external / "curves" / "roc" / "gadget.csv").is_file()


def wait_for(path, text: str, proc, seconds: float = 300) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        assert proc.poll() is None, path.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never appeared in {path}")


def _stopped_training(tmp_path, sig):
    """A `kedro run --pipeline train` of 100,000 steps sent ``sig`` inside its training loop:
    (project, process, log)."""
    project = make_project(tmp_path)
    write_local_parameters(project, deep_merge(SMALL, {"train": {"steps": 100000}}))
    log = tmp_path / "run.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kedro", "run", "--pipeline", "train"],
            cwd=project,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            wait_for(log, "train_model", proc)
            time.sleep(3)  # inside the training loop
            proc.send_signal(sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return project, proc, log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_run_ends_as_killed_with_what_it_logged(tmp_path, sig):
    """`kedro run` stopped by SIGTERM or Ctrl-C mid-training: the MLflow run ends as KILLED with
    its parameters, not RUNNING forever (SIGTERM) or FINISHED (Ctrl-C)."""
    from mlflow import MlflowClient

    project, proc, log = _stopped_training(tmp_path, sig)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"], log.read_text()[-2000:]
    assert runs[0].data.params["train.steps"] == "100000"
    assert proc.returncode != 0
    if sig == signal.SIGTERM:  # a checkpoint of the step it stopped at, named in the log
        written = list((project / "data" / "06_models" / "training_state").glob("*/step-*"))
        assert len(written) == 1, log.read_text()[-2000:]
        assert f"step {int(written[0].name[5:])} ->" in log.read_text()


def test_a_run_killed_outright_is_ended_as_killed_by_the_next_run(tmp_path):
    """SIGKILL leaves no handler a chance: the run stays RUNNING, and the next `kedro run` of the
    project, finding its process gone, ends it as KILLED and says which run did."""
    from mlflow import MlflowClient

    project, proc, log = _stopped_training(tmp_path, signal.SIGKILL)
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (orphan,) = client.search_runs(experiments)
    assert orphan.info.status == "RUNNING", log.read_text()[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = kedro_run(project, env, "--pipeline", "split")
    assert done.returncode == 0, done.stderr[-2000:]
    ended = client.get_run(orphan.info.run_id)
    said = " ".join((done.stdout + done.stderr).split())  # the log wraps long lines
    assert orphan.info.run_id in said and "ended as KILLED" in said, said[-2000:]
    assert ended.info.status == "KILLED" and "was gone" in ended.data.tags["vmad.ended_by"]


def test_a_killed_training_resumes_bitwise_at_the_default_settings(tmp_path):
    """The default's training settings (the small preset, LoRA dropout 0.05, the validation
    slice, calibration), through Kedro: a run killed with SIGKILL after a checkpoint, then the
    same command again, gives the curves, weights and adapter of a run never stopped, byte for
    byte. Only the data are SMALL's (the settings that decide a resume are the training's). It
    once diverged from the step after the checkpoint: restoring the RNG states before the data
    iterator was made let that iterator's seed draw shift every dropout mask (issue 27)."""
    project = make_project(tmp_path)
    small_data = {k: SMALL[k] for k in ("ingest", "annotate", "split")}
    train = {"steps": 30, "progress": False, "checkpoint": {"every_steps": 4}}
    write_local_parameters(project, {**small_data, "train": train})
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    models, kept = project / "data" / "06_models", {}

    def train_with(ckpt: str, **popen):
        args = ["kedro", "run", "--pipeline", "train", "--params", f"train.checkpoint.dir={ckpt}"]
        return subprocess.Popen([sys.executable, "-m", *args], cwd=project, env=env, **popen)

    assert train_with(str(tmp_path / "straight")).wait(timeout=600) == 0
    kept["curves"] = (project / "data/08_reporting/training_curves.csv").read_bytes()
    kept["weights"] = (models / "vmad/weights.safetensors").read_bytes()
    kept["adapter"] = (models / "vmad/adapter/adapter_model.safetensors").read_bytes()
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = train_with(str(tmp_path / "killed"), stdout=out, stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + 600
            while not list((tmp_path / "killed").glob("*/step-0000004")):
                assert proc.poll() is None and time.monotonic() < end, log.read_text()[-2000:]
                time.sleep(0.1)
            proc.kill()  # SIGKILL, with steps 5 to 30 still to go
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    resumed = train_with(str(tmp_path / "killed"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    said = " ".join(resumed.communicate(timeout=600)[0].decode(errors="replace").split())
    assert resumed.returncode == 0 and "resumed from the checkpoint of step" in said, said[-2000:]
    assert (project / "data/08_reporting/training_curves.csv").read_bytes() == kept["curves"]
    assert (models / "vmad/weights.safetensors").read_bytes() == kept["weights"]
    assert (models / "vmad/adapter/adapter_model.safetensors").read_bytes() == kept["adapter"]


def test_a_users_mistake_prints_its_message_not_a_traceback(tmp_path):
    """`kedro run` with a misspelt parameter: the message and its hint, status 1, no traceback
    (it used to end a 218-line one); VMAD_TRACEBACK=1 shows it."""
    project = make_project(tmp_path)
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VMAD_TRACEBACK")
    }
    args = ("--pipeline", "split", "--params", "split.seedz=3")
    done = kedro_run(project, env, *args)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said[-3000:]
    assert "Traceback" not in said and "split.seedz: unknown parameter" in said, said[-3000:]
    assert "ConfigError" in said and "VMAD_TRACEBACK=1" in said
    env["VMAD_TRACEBACK"] = "1"
    loud = kedro_run(project, env, *args)
    assert loud.returncode != 0 and "Traceback" in loud.stdout + loud.stderr


def test_after_kedro_run_dvc_commit_makes_dvc_agree(trained):
    """`kedro run` writes no dvc.lock, so DVC thinks every stage changed; the command the run's
    summary prints (`dvc commit -f dvc.yaml`) records the run, after which `dvc status` finds
    everything up to date and `dvc repro --dry` would run nothing (README, "DVC")."""
    import shutil

    from helpers import REPO

    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, trained / name)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def dvc(*args: str) -> str:
        done = subprocess.run(
            ["dvc", *args], cwd=trained, capture_output=True, text=True, env=env, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    subprocess.run(["git", "init", "-q"], cwd=trained, check=True)
    dvc("init", "-q")
    assert "changed" in dvc("status", "dvc.yaml")  # no dvc.lock: every stage looks new
    dvc("commit", "-f", "dvc.yaml")
    assert "Data and pipelines are up to date" in dvc("status", "dvc.yaml")
    dry = dvc("repro", "--dry", "dvc.yaml")
    assert "Running stage" not in dry and "didn't change" in dry, dry
