"""dvc.yaml knows what each stage depends on: every module a stage's nodes import (their whole
import closure, imports inside functions included) lies under one of the stage's ``deps``; and
plain ``dvc repro`` reproduces what ``kedro run`` does, nothing more."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers import REPO
from helpers.imports import PACKAGE, imports_of, modules


def closure(roots: set[str]) -> set[Path]:
    """The files of ``roots`` and of everything they may run, transitively: a module whose
    functions may be called counts with the imports inside its functions; a module that is only
    imported along the way (a parent package's ``__init__``, and what it imports) counts with its
    top-level imports only."""
    todo = [(m, False) for m in roots]  # (module, top-level only)
    seen: dict[str, bool] = {}
    while todo:
        name, top = todo.pop()
        if name in seen and (top or not seen[name]):
            continue
        seen[name] = top
        parts = name.split(".")
        todo += [(".".join(parts[:i]), True) for i in range(2, len(parts))]  # parent packages
        todo += [(m, top) for m in imports_of(name, top_level_only=top)]
    files = modules()
    return {files[m] for m in seen if m != PACKAGE}


def stage_modules(pipeline: str) -> set[str]:
    """The modules defining the stage's own nodes (``--tags <pipeline>``), and those of the
    project's dataset classes its nodes read or write."""
    from kedro.framework.project import configure_project

    configure_project(PACKAGE)
    import importlib

    pipe = importlib.import_module(f"{PACKAGE}.pipelines.{pipeline}").create_pipeline()
    own = pipe.only_nodes_with_tags(pipeline)
    found = {n.func.__module__ for n in own.nodes}
    catalog = yaml.safe_load((REPO / "conf/base/catalog.yml").read_text())
    for name in own.datasets():
        kind = (catalog.get(name) or {}).get("type", "")
        if kind.startswith(PACKAGE):
            found.add(kind.rpartition(".")[0])
    return found


def stages() -> dict[str, dict]:
    out = {}
    for path in (REPO / "dvc.yaml", *sorted(REPO.glob("*/dvc.yaml"))):
        for name, stage in yaml.safe_load(path.read_text())["stages"].items():
            out[name] = {**stage, "file": path}
    return out


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_imported_module_is_a_dependency(name):
    stage = stages()[name]
    pipeline = re.search(r"--pipeline (\w+)", stage["cmd"]).group(1)
    wdir = (stage["file"].parent / stage.get("wdir", ".")).resolve()
    deps = [(wdir / d).resolve() for d in stage["deps"]]
    missing = sorted(
        str(f.relative_to(REPO))
        for f in closure(stage_modules(pipeline))
        if not any(f == d or d in f.parents for d in deps)
    )
    assert not missing, f"dvc stage {name!r} does not depend on {missing}"


def test_plain_dvc_repro_runs_what_kedro_run_runs():
    """The default dvc.yaml holds the stages of `kedro run` (its __default__ pipeline); export
    and the ablation live beside it and run on request."""
    from vmad_pipeline.pipeline_registry import ORDER

    main = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert tuple(main) == ORDER
    assert {"export", "ablation"} <= set(stages())
