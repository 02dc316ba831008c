"""The import graph is layered and acyclic (style.md): every module imports only its own layer
or those below, within a layer only along the listed edges, no pipeline imports another
pipeline's nodes, and no import cycle exists between modules. Imports inside functions count."""

from __future__ import annotations

from helpers.imports import PACKAGE, imports_of, modules

# Top-level modules and packages by layer; a module may import a lower layer freely.
LAYERS = {
    "configs": 0,
    "prompts": 0,
    "images": 0,
    "atomic": 0,
    "placement": 0,
    "datasets": 1,
    "annotation": 1,
    "splitting": 1,
    "models": 2,
    "losses": 2,
    "metrics": 2,
    "training": 3,
    "evaluation": 3,
    "inference": 3,
    "ablation": 4,
    "synthesis": 4,  # the defect generator: trains on training's samples and stage cache
    "io": 5,
    "pipelines": 6,
    "hooks": 6,
    "settings": 6,
    "pipeline_registry": 6,
    "__main__": 6,
    "apps": 6,
}
# Imports between different packages of one layer that the design allows (a rule needed by two
# packages of a layer lives in the one that is used).
SAME_LAYER = {
    ("annotation", "datasets"),  # RIAD reads the manifest and its masks
    ("splitting", "datasets"),
    ("metrics", "annotation"),  # location / defect-type parsing uses the taxonomy and geometry
    ("models", "losses"),
    ("inference", "evaluation"),  # the predictor scores by evaluation.scores, the one rule
    ("evaluation", "datasets"),
    ("training", "annotation"),
    ("ablation", "synthesis"),  # Table VI trains cells with generated anomalies
    ("settings", "hooks"),  # Kedro settings register the hooks
    ("__main__", "apps"),  # the command line starts the chat and the demo
}


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else name


def graph() -> dict[str, set[str]]:
    return {name: imports_of(name) for name in modules()}


def test_every_module_has_a_layer():
    assert not {top(m) for m in graph() if m != PACKAGE} - set(LAYERS)


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
