"""Ingest -> annotate -> split -> train -> evaluate on an in-memory DataCatalog with Kedro's
SequentialRunner: every node wired as in the project, parameters from conf/base with the tiny
settings, only the generated tree and the checkpoint on disk."""

from __future__ import annotations

import copy

import pytest
import yaml
from helpers import REPO
from helpers.project import SMALL
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from vmad_pipeline.ablation.plan import deep_merge
from vmad_pipeline.io.images import ImageTreeDataset
from vmad_pipeline.io.models import VmadCheckpointDataset
from vmad_pipeline.splitting import split_rows


def parameters() -> dict:
    params = {}
    for path in sorted((REPO / "conf" / "base").glob("parameters_*.yml")):
        params |= yaml.safe_load(path.read_text())
    return deep_merge(params, SMALL)


def params_datasets(params: dict, prefix: str = "params:") -> dict[str, MemoryDataset]:
    """ "params:train", "params:ingest.synthetic", ... as Kedro names nested parameters."""
    out = {}
    for key, value in params.items():
        out[f"{prefix}{key}"] = MemoryDataset(copy.deepcopy(value))
        if isinstance(value, dict):
            out |= params_datasets(value, f"{prefix}{key}.")
    return out


class Kept(MemoryDataset):
    """An in-memory dataset the runner does not empty once its consumers ran."""

    def _release(self) -> None:
        pass


KEPT = ("manifest", "splits", "training_summary", "metrics", "eval_predictions", "eval_answers")


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    from kedro.framework.project import configure_project

    from vmad_pipeline.pipelines.annotate import create_pipeline as annotate
    from vmad_pipeline.pipelines.evaluate import create_pipeline as evaluate
    from vmad_pipeline.pipelines.ingest import create_pipeline as ingest
    from vmad_pipeline.pipelines.split import create_pipeline as split
    from vmad_pipeline.pipelines.train import create_pipeline as train

    configure_project("vmad_pipeline")
    tmp = tmp_path_factory.mktemp("run")
    params = parameters()
    params["ingest"]["cache"] = None  # nothing on disk but the tree and the checkpoint
    params["train"]["checkpoint"]["dir"] = str(tmp / "training_state")
    catalog = DataCatalog(
        {
            **params_datasets(params),
            "taxonomy": MemoryDataset(
                yaml.safe_load((REPO / "conf/base/taxonomy.yml").read_text())
            ),
            "synthetic_images": ImageTreeDataset(path=str(tmp / "synthetic")),
            "vmad_model": VmadCheckpointDataset(path=str(tmp / "vmad")),
            **{name: Kept() for name in (*KEPT, "headline_metrics")},
        }
    )
    training = (
        train()
        .only_nodes_with_tags("train")
        .filter(node_names=["fit_tokenizer", "train_expert", "train_generator", "train_model"])
    )
    pipe = ingest() + annotate() + split() + training + evaluate()
    SequentialRunner().run(pipe, catalog)
    return catalog, params


def test_train_uses_the_split_training_rows(ran):
    catalog, _ = ran
    train_rows, _ = split_rows(catalog.load("manifest"), catalog.load("splits"))
    summary = catalog.load("training_summary")
    # every image of the training classes: trained on, or in the held-out validation slice
    assert summary["train_images"] + summary["validation_images"] == len(train_rows)
    assert summary["validation_images"] >= 1
    assert summary["train_classes"] == sorted(set(train_rows["category"]))
    assert summary["steps"] == SMALL["train"]["steps"]
    assert summary["images_per_s"] > 0 and summary["peak_host_memory_mb"] > 100


def test_evaluate_scores_every_unseen_image_once(ran):
    catalog, params = ran
    _, test_rows = split_rows(catalog.load("manifest"), catalog.load("splits"))
    metrics = catalog.load("metrics")
    assert set(metrics["per_class"]) == set(params["split"]["test_classes"])
    assert metrics["counts"]["n_images"] == len(test_rows)
    predictions, graded = catalog.load("eval_predictions"), catalog.load("eval_answers")
    assert len(graded) == len(test_rows) == len(predictions["maps"])
    # The scores the metrics were computed on are the ones graded and reported, computed once.
    assert list(graded["score"]) == pytest.approx(list(predictions["scores"]))
    headline = catalog.load("headline_metrics")
    assert headline == {k: metrics["mean"][k] for k in headline}
