"""The import graph is layered and acyclic (docs/architecture.md): every module imports only its
own layer or those below, within a layer only along the listed edges, no pipeline imports another
pipeline's nodes, no import cycle exists between modules, and only io, the pipelines, the apps
and the Kedro plumbing import Kedro, MLflow or Gradio. Imports inside functions count.

The layers, the same-layer edges and the framework rule are read from the tables of
docs/architecture.md, the one written rule: the test and the document cannot drift."""

from __future__ import annotations

import re

from helpers import REPO
from helpers.imports import PACKAGE, imports_of, modules, third_party_in, third_party_of

DOC = REPO / "docs" / "architecture.md"


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of ``text``: its rows as lists of cells, header first, the
    ``| --- |`` separator dropped."""
    out: list[list[list[str]]] = []
    rows: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        line = line.strip()
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
        elif rows:
            out.append(rows)
            rows = []
    return out


def code_names(cell: str) -> list[str]:
    """The backquoted names of a cell, a package's ``/`` and a module's ``.py`` dropped."""
    return [re.sub(r"(/|\.py)$", "", n) for n in re.findall(r"`([^`]+)`", cell)]


def doc_table(first_header: str) -> tuple[list[str], list[list[str]]]:
    """The one table of docs/architecture.md whose first column is ``first_header``."""
    found = [t for t in markdown_tables(DOC.read_text()) if t[0][0] == first_header]
    assert len(found) == 1, f"docs/architecture.md needs one table headed {first_header!r}"
    return found[0][0], found[0][1:]


def read_layers() -> tuple[dict[str, int], set[str], set[str]]:
    """Layer by top-level module; the frameworks (the column named by them); the modules that
    may import them (that column's "yes")."""
    header, rows = doc_table("Layer")
    column = next(i for i, h in enumerate(header) if "mlflow" in h)
    layers, homes = {}, set()
    for row in rows:
        for name in code_names(row[1]):
            assert name not in layers, f"{name} is in two rows of docs/architecture.md"
            layers[name] = int(row[0])
            if row[column].lower() == "yes":
                homes.add(name)
    return layers, set(code_names(header[column])), homes


def read_same_layer() -> dict[tuple[str, str], str]:
    """The allowed same-layer edges, with their reasons."""
    _, rows = doc_table("From")
    return {(code_names(r[0])[0], code_names(r[1])[0]): r[2] for r in rows}


# Top-level modules and packages by layer; a module may import a lower layer freely.
LAYERS, FRAMEWORKS, FRAMEWORK_HOMES = read_layers()
# Imports between different packages of one layer that the design allows.
SAME_LAYER = read_same_layer()


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else name


def graph() -> dict[str, set[str]]:
    return {name: imports_of(name) for name in modules()}


def is_framework(name: str) -> bool:
    """``kedro``, ``mlflow``, ``gradio``, and their companions (``kedro_datasets``, ...)."""
    return any(name == f or name.startswith(f"{f}_") for f in FRAMEWORKS)


def framework_violations(third_party: dict[str, set[str]]) -> list[str]:
    """``module -> framework`` for every import of a framework by a module outside its homes
    (``third_party``: the top-level third-party names each module imports)."""
    return sorted(
        f"{name} -> {dep}"
        for name, deps in third_party.items()
        if top(name) not in FRAMEWORK_HOMES
        for dep in deps
        if is_framework(dep)
    )


def test_the_document_has_the_rule():
    assert FRAMEWORKS == {"kedro", "mlflow", "gradio"}
    assert FRAMEWORK_HOMES and FRAMEWORK_HOMES < set(LAYERS)
    assert all(SAME_LAYER.values()), "every same-layer edge says why"


def test_every_module_has_a_layer_and_every_layer_entry_a_module():
    tops = {top(m) for m in graph() if m != PACKAGE}
    assert not tops - set(LAYERS), "modules docs/architecture.md does not place"
    assert not set(LAYERS) - tops, "docs/architecture.md places modules that do not exist"


def test_nothing_imports_upward_or_sideways_unlisted():
    bad = []
    for name, deps in graph().items():
        if name == PACKAGE:
            continue
        src = top(name)
        for dep in deps - {PACKAGE}:  # the root package only names the version
            dst = top(dep)
            if dst == src or LAYERS[dst] < LAYERS[src]:
                continue
            if LAYERS[dst] > LAYERS[src] or (src, dst) not in SAME_LAYER:
                bad.append(f"{name} -> {dep}")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_every_same_layer_edge_is_used():
    """An allowed edge that joins two layers (the layer numbers already decide it) or that no
    import takes is a dead exception: remove it from the document."""
    across = sorted((a, b) for a, b in SAME_LAYER if LAYERS[a] != LAYERS[b])
    assert not across, f"edges between layers, decided by the layer numbers already: {across}"
    used = {
        (top(name), top(dep))
        for name, deps in graph().items()
        if name != PACKAGE
        for dep in deps - {PACKAGE}
    }
    dead = sorted(set(SAME_LAYER) - used)
    assert not dead, f"same-layer edges of docs/architecture.md no import uses: {dead}"


def test_frameworks_only_in_io_pipelines_apps_and_plumbing():
    third_party = {name: third_party_of(name) for name in modules()}
    bad = framework_violations(third_party)
    assert not bad, "Kedro / MLflow / Gradio outside their layers:\n" + "\n".join(bad)


def test_the_framework_check_reports_a_violating_import():
    """The check fails on what it must catch: a framework imported by a library module, at top
    level, inside a function, as a submodule or by name; and passes the same import in io."""
    in_function = "def log(x):\n    import mlflow\n    mlflow.log_metric('x', x)\n"
    cases = {
        "vmad_pipeline.models.vmad": third_party_in(in_function),
        "vmad_pipeline.training.loop": third_party_in("from kedro.io import AbstractDataset\n"),
        "vmad_pipeline.evaluation.figures": third_party_in("import gradio as gr\n"),
        "vmad_pipeline.ablation.run": third_party_in(
            "import importlib\n\ndef f():\n    return importlib.import_module('mlflow.pyfunc')\n"
        ),
        "vmad_pipeline.atomic": third_party_in("import kedro_datasets.pandas\n"),
        "vmad_pipeline.io.tracking": third_party_in(in_function),
        "vmad_pipeline.pipelines.train.worker": third_party_in(in_function),
        "vmad_pipeline.hooks": third_party_in("from kedro.framework.hooks import hook_impl\n"),
    }
    assert framework_violations(cases) == [
        "vmad_pipeline.ablation.run -> mlflow",
        "vmad_pipeline.atomic -> kedro_datasets",
        "vmad_pipeline.evaluation.figures -> gradio",
        "vmad_pipeline.models.vmad -> mlflow",
        "vmad_pipeline.training.loop -> kedro",
    ]
    assert third_party_in("import numpy\nimport os\nfrom . import x\n") == {"numpy"}


def test_no_pipeline_imports_another_pipelines_nodes():
    bad = []
    for name, deps in graph().items():
        if not name.startswith(f"{PACKAGE}.pipelines."):
            continue
        own = name.split(".")[2]
        for dep in deps:
            parts = dep.split(".")
            if dep.startswith(f"{PACKAGE}.pipelines.") and len(parts) > 3 and parts[2] != own:
                if parts[3] != "pipeline":  # composing another pipeline is fine
                    bad.append(f"{name} -> {dep}")
    assert not bad, bad


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    real = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)
