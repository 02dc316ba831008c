"""One end-to-end run of every pipeline through a Kedro session, on a very small config."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO
from helpers.project import SMALL, make_project, run, write_local_parameters
from PIL import Image
from sklearn.metrics import roc_auc_score


@pytest.mark.slow
def test_all_pipelines_end_to_end(tmp_path, monkeypatch, capsys):
    project = make_project(tmp_path)
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # use the project's SQLite store
    run(project, None, SMALL)
    printed = capsys.readouterr().out  # the run ends with its summary, not with log lines
    assert "Unseen classes (" in printed and "Reports: data/08_reporting/" in printed
    assert printed.rstrip().splitlines()[-1].startswith("DVC:  dvc commit -f dvc.yaml")
    assert "with 4 normal reference(s), the model: image AUROC" in printed

    data = project / "data"
    manifest = pd.read_parquet(data / "02_intermediate" / "manifest.parquet")
    assert set(manifest["category"]) == set(SMALL["ingest"]["synthetic"]["classes"])
    assert (manifest["defect_id"] >= 0).sum() == manifest["label"].sum()
    coco = json.loads((data / "03_primary" / "riad" / "instances.json").read_text())
    assert len(coco["categories"]) == 15 and len(coco["annotations"]) == int(
        manifest["label"].sum()
    )
    qa = pd.read_json(data / "03_primary" / "riad" / "qa.jsonl", lines=True)
    assert {"description", "impact", "suggestion"} <= set(qa.columns) and len(qa) == int(
        manifest["label"].sum()
    )
    splits = json.loads((data / "05_model_input" / "splits.json").read_text())
    assert splits["test_classes"] == ["pcb", "washer"]

    ckpt = data / "06_models" / "vmad"
    assert (ckpt / "adapter" / "adapter_config.json").is_file()
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    assert (ckpt / "weights.safetensors").is_file()
    assert not [p for p in (data / "06_models").iterdir() if p.name.startswith(".")]  # no temp dirs

    metrics = metrics_default = json.loads((data / "08_reporting" / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"pcb", "washer"}
    per_class = pd.read_csv(data / "08_reporting" / "metrics_per_class.csv")
    for key in ("image_auroc", "pixel_auroc", "aupro"):  # the unweighted mean of the classes
        assert metrics["mean"][key] == pytest.approx(per_class[key].mean(), abs=1e-6)
    graded = pd.read_csv(data / "08_reporting" / "answers.csv")
    for cls, group in graded.groupby("category"):  # image AUROC of the scores in answers.csv
        auroc = roc_auc_score(group["label"], group["score"])
        assert metrics["per_class"][cls]["image_auroc"] == pytest.approx(auroc, abs=1e-6)
    assert metrics["settings"]["eval_size"] == 32
    assert metrics["settings"]["score_source"] == "fused"
    assert set(metrics["mean"]) >= {
        "image_ap",
        "image_f1_max",
        "pixel_ap",
        "pro_200_thresholds",
        "answer_accuracy",
        "answer_balanced_accuracy",
        "defect_type_accuracy",
        "location_accuracy",
    }
    reports = data / "08_reporting"
    test_images = manifest[
        manifest["category"].isin(["pcb", "washer"]) & (manifest["split"] == "test")
    ]
    assert len(pd.read_csv(reports / "answers.csv")) == len(test_images)
    for name in ("overlays.png", "roc.png", "pr.png", "pro.png", "shots_roc.png"):
        assert (reports / name).stat().st_size > 1000
    assert (reports / "metrics_per_class.md").is_file()
    # the text metrics by level (docs/evaluation.md): every level per class and as the mean; the
    # anomalous test images asked the long follow-ups, graded against their RIAD answers
    hierarchy = metrics["hierarchy"]
    levels = {"level1_binary", "level2_type", "level3_location", "level4_rouge_l"}
    assert levels <= set(hierarchy["mean"]) and set(hierarchy["per_class"]) == {"pcb", "washer"}
    assert hierarchy["mean"]["level4_rouge_l"] is not None
    n_anomalous = int(test_images["label"].sum())
    assert hierarchy["counts"] == {
        "level4_asked": 3 * n_anomalous,
        "level4_graded": 3 * n_anomalous,
        "level4_broken": 0,  # written from the evidence (ground_words): whole sentences
    }
    assert metrics["mean"]["level4_consistency"] == 1.0  # and none contradicts its first answer
    assert {"level4_rouge_l", "level4_impact_rouge_l"} <= set(per_class.columns)
    assert "L4 ROUGE-L" in (reports / "metrics_per_class.md").read_text()
    assert graded["follow_up_description_reference"].notna().sum() == n_anomalous
    assert {p.stem for p in (reports / "curves" / "roc").glob("*.csv")} == {"pcb", "washer"}

    # The registry holds the model; the pyfunc predicts a score and a map for an image.
    import mlflow

    store = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)  # not a registry left over from an earlier test's session
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    versions = client.search_model_versions("name='vmad'")
    assert versions
    run_data = client.get_run(versions[0].run_id).data
    assert "git_commit" in run_data.tags and "dataset_hash" in run_data.tags
    assert run_data.tags["mlflow.runName"] == "default"  # named by pipeline, not __default__
    assert {k: run_data.tags[k] for k in ("preset", "projector", "ltc", "dssl", "seed")} == {
        "preset": "small",
        "projector": "ltc",
        "ltc": "on",
        "dssl": "on",
        "seed": "0",
    }
    assert "train.steps" in run_data.params
    assert "train/loss" in run_data.metrics and "train/pbsd" in run_data.metrics
    assert "test/hierarchy/level4_rouge_l" in run_data.metrics
    # what the run cost: throughput and peak memory (no GPU here: no GPU figure, not a zero)
    assert run_data.metrics["train/images_per_s"] > 0
    assert run_data.metrics["train/peak_host_memory_mb"] > 100
    assert "train/peak_gpu_memory_mb" not in run_data.metrics
    model = mlflow.pyfunc.load_model(f"models:/vmad/{versions[0].version}")
    # The registered model knows what it was trained on (as its checkpoint does).
    trained_on = model.metadata.metadata["trained_on"]
    assert trained_on["classes"] == sorted(set(splits["train_classes"]))
    assert json.loads((ckpt / "config.json").read_text())["trained_on"] == trained_on
    image = next((data / "01_raw" / "synthetic" / "pcb" / "test").rglob("*.png"))
    encoded = base64.b64encode(image.read_bytes()).decode()
    out = model.predict(pd.DataFrame({"image": [encoded], "category": ["pcb"]}))
    with (
        Image.open(image) as im,
        Image.open(io.BytesIO(base64.b64decode(out["anomaly_map_png"][0]))) as amap,
    ):
        assert amap.size == im.size  # the map at the input image's size
        map_max = np.asarray(amap).max() / 255
    # The registered model scores an image exactly as the evaluation did (same rule, same map).
    evaluated = graded.set_index("image_path")["score"]
    rel = image.relative_to(data / "01_raw" / "synthetic").as_posix()
    assert out["score"][0] == pytest.approx(evaluated[rel], abs=1e-5)
    fused = 0.5 * out["p_yes"][0] + 0.5 * map_max  # the fused rule (the map as 8-bit PNG)
    own = json.loads((ckpt / "config.json").read_text())["model"]["self_comparison"]
    if out["repeats_itself"][0]:  # zero-shot, nothing in the image unlike the rest of it
        fused *= own["repeated_score"]
    assert out["score"][0] == pytest.approx(fused, abs=3e-3)

    # The decision thresholds: calibrated on held-out normal images of the training classes,
    # stored with the model, used by the registered model and reported by the evaluation.
    summary = json.loads((data / "08_reporting" / "training_summary.json").read_text())
    decision = summary["decision"]
    assert decision["calibrated"] and decision["image_rule"] == "fpr@0.05"
    assert decision["n_normal"] >= 1 and decision["n_anomalous"] == 0
    assert bool(out["anomalous"][0]) == (out["score"][0] >= decision["image_threshold"])
    assert metrics["decision"]["threshold"] == decision["image_threshold"]
    assert {"tp", "fp", "tn", "fn", "precision", "recall", "f1"} <= set(metrics["decision"])

    # The export pipeline merges LoRA into a standalone model that loads without peft.
    run(project, "export", SMALL)
    from vmad_pipeline.models.checkpoint import load_exported

    exported, _ = load_exported(data / "06_models" / "vmad_export")
    assert exported.dssl is None and type(exported.llm).__name__ == "LlamaForCausalLM"

    # Evaluate on another MVTec-layout root by parameter: every class there is a test class.
    other = tmp_path / "other"
    for i, stem in enumerate(["000", "001"]):
        rng = np.random.default_rng(i)
        for sub in ("good", "dent"):
            (other / "gadget" / "test" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                other / "gadget" / "test" / sub / f"{stem}.png"
            )
        (other / "gadget" / "ground_truth" / "dent").mkdir(parents=True, exist_ok=True)
        mask = np.zeros((40, 40), np.uint8)
        mask[5:15, 5:15] = 255
        Image.fromarray(mask).save(other / "gadget" / "ground_truth" / "dent" / f"{stem}_mask.png")
    run(
        project,
        "evaluate",
        {
            **SMALL,
            "evaluate": {**SMALL["evaluate"], "dataset": {"root": str(other), "name": "other"}},
        },
    )
    # ... its reports go beside the default run's, in external/<name>/.
    external = data / "08_reporting" / "external" / "other" / "metrics.json"
    metrics = json.loads(external.read_text())
    assert set(metrics["per_class"]) == {"gadget"} and metrics["settings"]["n_images"] == 4

    # Predict on new images (the other tree's, a plain folder of any layout): a line, a mask,
    # a map and an overlay per image; a rerun does nothing new.
    predict = {**SMALL, "predict": {"input": str(other), "progress": False}}
    run(project, "predict", predict)
    out = data / "08_reporting" / "predictions"
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {r["category"] for r in lines} == {"gadget"}
    # ... scored as the evaluation of that tree scored the same images (one detector)
    scored = pd.read_csv(external.parent / "answers.csv").set_index("image_path")["score"]
    for r in lines:
        rel = Path(r["image"]).relative_to(other).as_posix()
        assert r["score"] == pytest.approx(scored[rel], abs=1e-5)
    assert all((out / r["files"]["overlay"]).is_file() for r in lines)
    run(project, "predict", predict)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["already_done"] == 4 and summary["predicted"] == 0
    assert summary["image_threshold"] == decision["image_threshold"]  # the model's own
    assert summary["image_from"] == "calibrated: fpr@0.05"

    # The model with normal references (docs/references.md): scored at k = 4 and in batch mode
    # beside its zero-shot scores, with references from the test classes' normal training images.
    shots = metrics_default["shots"]
    assert {"4", "batch"} <= set(shots)
    assert set(shots["4"]["per_class"]) == {"pcb", "washer"}
    assert shots["4"]["decision"]["classes"] == 2  # each class's threshold from its references
    drawn = {p for refs in shots["4"]["references"].values() for p in refs}
    assert drawn and not drawn & set(test_images["image_path"])  # never a test image
    assert "shots/4/image_auroc" in run_data.metrics and "shots/batch/aupro" in run_data.metrics

    # A product profile from normal images, then predict against it, and in batch mode.
    good = data / "01_raw" / "synthetic" / "pcb" / "train" / "good"
    profile = {"name": "pcb-line1", "category": "pcb", "images": str(good)}
    run(project, "profile", {**SMALL, "profile": profile})
    stored = json.loads(
        (data / "06_models" / "profiles" / "pcb-line1" / "profile.json").read_text()
    )
    assert len(stored["images"]) == len(list(good.glob("*.png"))) >= 2
    assert stored["threshold"] is not None and stored["backbone"]["preset"] == "small"
    experiment = client.get_run(versions[0].run_id).info.experiment_id
    runs = client.search_runs([experiment], filter_string="tags.mlflow.runName = 'profile'")
    assert runs and runs[0].data.metrics["profile/threshold"] == pytest.approx(stored["threshold"])
    shutil.rmtree(out)
    run(
        project,
        "predict",
        {**predict, "predict": {**predict["predict"], "references": "pcb-line1"}},
    )
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert {r["references"] for r in lines} == {"profile:pcb-line1"}
    assert {r["image_threshold"] for r in lines} == {stored["threshold"]}
    shutil.rmtree(out)
    run(project, "predict", {**predict, "predict": {**predict["predict"], "references": "batch"}})
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {r["references"] for r in lines} == {"batch"}

    # The README's registered-model example, as written, in the project folder.
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- pyfunc-example -->")[1].split("<!-- /pyfunc-example -->")[0]
    code = "\n".join(x[2:] for x in block.split("```python")[1].split("```")[0].splitlines())
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    assert namespace["out"]["score"].between(0, 1).all()
    mlflow.set_tracking_uri(store)  # the example set the relative URI

    # The chat, scripted as docs/chat.md shows: questions on stdin, JSON lines on stdout.
    write_local_parameters(project, {"evaluate": SMALL["evaluate"]})
    image = data / "01_raw" / "synthetic" / "pcb" / "test" / "good" / "000.png"

    def chat(questions: str, *options: str) -> list[dict]:
        """``vmad-pipeline chat`` on the image; its JSON lines (nothing else is on stdout)."""
        done = subprocess.run(
            [sys.executable, "-m", "vmad_pipeline", "chat", str(image), "--category", "pcb"]
            + list(options),
            input=questions,
            capture_output=True,
            text=True,
            cwd=project,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(x) for x in done.stdout.splitlines()]

    said = chat("Where is it?\nHow severe is it?\nWhat should be done?\n")
    assert [x["turn"] for x in said] == [0, 1, 2, 3]
    assert said[0]["anomalous"] == (said[0]["score"] >= decision["image_threshold"])
    # one detector everywhere: the chat scores the image as the evaluation did
    rel = image.relative_to(data / "01_raw" / "synthetic").as_posix()
    assert said[0]["score"] == pytest.approx(evaluated[rel], abs=1e-5)
    assert all("[SEG]" not in x["answer"] for x in said) and all(x["answer"] for x in said[1:])
    # ... and against the profile built above: its references, its threshold
    said = chat("Where is it?\n", "--references", "pcb-line1")
    assert said[0]["references"] == "profile:pcb-line1"
    assert said[0]["image_threshold"] == stored["threshold"] and len(said) == 2
    # The README's profile example, as written: a profile, then predict against it.
    block = readme.split("<!-- profile-example -->")[1].split("<!-- /profile-example -->")[0]
    for line in block.split("```bash")[1].split("```")[0].strip().splitlines():
        done = subprocess.run(
            ["bash", "-c", line], cwd=project, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, (line, done.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["references"] == "profile:pcb-line1" and summary["image_from"] == "references"
    # the follow-ups are trained and measured: the evaluation reports them
    assert metrics_default["mean"]["follow_up_location_accuracy"] is not None


def only_source(root: Path) -> dict:
    """SMALL, reading one MVTec-layout root instead of generating data."""
    sources = [{"name": "src", "format": "mvtec", "root": str(root)}]
    return {
        **SMALL,
        "ingest": {**SMALL["ingest"], "synthetic": {"enabled": False}, "sources": sources},
    }


@pytest.mark.slow
def test_corrupt_image_stops_ingest_and_writes_nothing(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    monkeypatch.chdir(project)
    root = tmp_path / "broken"
    (root / "part" / "train" / "good").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
        root / "part" / "train" / "good" / "000.png"
    )
    (root / "part" / "train" / "good" / "001.png").write_bytes(b"not a png")
    with pytest.raises(Exception, match="001.png"):
        run(project, "ingest", only_source(root))
    assert not (project / "data" / "02_intermediate" / "manifest.parquet").exists()
    assert not (project / "data" / "02_intermediate" / "manifest_raw.parquet").exists()


@pytest.mark.slow
def test_empty_dataset_root_is_named(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    monkeypatch.chdir(project)
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(Exception, match="no MVTec-layout classes found.*nothing_here"):
        run(project, "ingest", only_source(empty))
    with pytest.raises(Exception, match="does_not_exist"):
        run(project, "ingest", only_source(tmp_path / "does_not_exist"))


def test_unknown_source_format_is_named():
    from vmad_pipeline.configs import ConfigError
    from vmad_pipeline.datasets.registry import source_roots

    with pytest.raises(ConfigError, match=r"ingest\.sources\[0\]\.format.*'nosuch'"):
        source_roots([{"name": "a", "format": "nosuch", "root": "/x"}], "/syn")


@pytest.mark.slow
def test_walkthrough_notebook_runs_top_to_bottom(tmp_path, monkeypatch, capfd):
    """The notebook runs as a user runs it: its figures survive the pipeline run (nothing switches
    matplotlib's backend) and the run cell prints a short log, not one line per step."""
    import matplotlib

    matplotlib.use("svg")  # stands for the notebook's own (inline) backend
    project = make_project(tmp_path)
    shutil.copytree(REPO / "notebooks", project / "notebooks")
    monkeypatch.chdir(project / "notebooks")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    notebook = json.loads((project / "notebooks" / "walkthrough.ipynb").read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    assert "PARAMS = {}" in cells[0]
    cells[0] = cells[0].replace("PARAMS = {}", "PARAMS = SMALL")
    namespace = {"SMALL": SMALL}
    printed = []
    loggers = {n: logging.getLogger(n).level for n in ("kedro", "vmad_pipeline", "mlflow")}
    try:
        for cell in cells:
            exec(compile(cell, "walkthrough.ipynb", "exec"), namespace)
            out, err = capfd.readouterr()
            printed.append((out + err).count("\n"))
    finally:
        for name, level in loggers.items():  # the notebook quiets them: not for later tests
            logging.getLogger(name).setLevel(level)
    assert matplotlib.get_backend() == "svg"
    # a short log (under 40 lines) and the run's summary (16 lines: evaluation/summary.py, with
    # the model at k = 4 and in batch mode, and the DVC line)
    assert printed[1] < 40 + 16, f"the run cell printed {printed[1]} lines"
    out, map_max = namespace["out"], np.asarray(namespace["amap"]).max() / 255
    fused = 0.5 * out["p_yes"][0] + 0.5 * map_max  # the fused rule (the map as 8-bit PNG)
    config = json.loads((project / "data/06_models/vmad/config.json").read_text())
    if out["repeats_itself"][0]:  # zero-shot, nothing in the image unlike the rest of it
        fused *= config["model"]["self_comparison"]["repeated_score"]
    assert out["score"][0] == pytest.approx(fused, abs=3e-3)
