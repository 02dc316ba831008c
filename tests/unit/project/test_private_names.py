"""No module reads another module's private name (style.md: make it public, or move the function
where the name lives). Checked on the source (AST) of every module of the package:

- ``from m import _name`` (absolute or relative), and any import of a private module ``m._x``;
- ``x._name``, unless ``x`` is ``self``, ``cls``, ``super()`` or a class, function or variable the
  module itself defines at top level (an imported module, a parameter such as ``model``, or an
  attribute such as ``self.llm`` are another module's objects); so are ``getattr(x, "_name")``,
  ``setattr``, ``hasattr`` and ``delattr``;
- dunder names (``__dict__``, ``__module__``) are public.

Third-party internals are allowed only where ALLOWED lists them, each with why it cannot be
avoided; an entry no module needs any more is an error too."""

from __future__ import annotations

import ast

import pytest
from helpers import REPO
from helpers.imports import PACKAGE, SRC, modules

OWN = {"self", "cls"}
ATTR_FUNCTIONS = {"getattr", "setattr", "hasattr", "delattr"}

# (module, what it reads) -> why it is unavoidable. Third-party internals only.
ALLOWED = {
    (
        "vmad_pipeline.models.efficientnet",
        "images._version",
    ): "torch's in-place version counter of a tensor, the only way to see that a cached input "
    "was modified in place (torch has no public accessor)",
    (
        "vmad_pipeline.pipelines.train.worker",
        "kedro.framework.cli.utils._split_params",
    ): "kedro's parser of `kedro run --params`: the worker must read --params exactly as kedro "
    "run does, and kedro exposes no public parser",
}


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_names(tree: ast.Module) -> set[str]:
    """The names a module binds at top level itself (classes, functions, assignments), not the
    ones it imports."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def import_target(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` reads (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts[: len(parts) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def own_base(base: ast.expr, own: set[str]) -> bool:
    """Whether ``base._x`` reads the module's own object: ``self``, ``cls``, ``super()``, or a
    name the module defines."""
    if isinstance(base, ast.Name):
        return base.id in OWN or base.id in own
    return (
        isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super"
    )


def violations(source: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, what is read) for every private name of another module that ``source`` (the text
    of module ``module``) reads."""
    tree = ast.parse(source)
    own = own_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = import_target(node, module, is_package)
            if any(private(p) for p in target.split(".")):
                found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names if private(a.name)]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name)
                for a in node.names
                if any(private(p) for p in a.name.split("."))
            ]
        elif isinstance(node, ast.Attribute) and private(node.attr):
            if not own_base(node.value, own):
                found.append((node.lineno, ast.unparse(node)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ATTR_FUNCTIONS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and private(node.args[1].value)
            and not own_base(node.args[0], own)
        ):
            found.append((node.lineno, f"{ast.unparse(node.args[0])}.{node.args[1].value}"))
    return sorted(found)


def all_violations() -> dict[tuple[str, str], str]:
    """(module, what it reads) -> where (file:line), over the whole package."""
    out = {}
    for name, path in modules().items():
        is_package = path.name == "__init__.py"
        for line, what in violations(path.read_text(), name, is_package=is_package):
            out.setdefault((name, what), f"{path.relative_to(REPO)}:{line}")
    return out


def test_no_module_reads_another_modules_private_name():
    found = all_violations()
    bad = sorted(
        f"{where}: {what}" for (m, what), where in found.items() if (m, what) not in ALLOWED
    )
    assert not bad, "private names read from another module:\n" + "\n".join(bad)


def test_every_allowance_is_needed_and_says_why():
    assert all(reason.strip() for reason in ALLOWED.values())
    unused = sorted(set(ALLOWED) - set(all_violations()))
    assert not unused, f"ALLOWED entries no module needs any more: {unused}"


def test_the_check_fails_on_the_models_private_seg_masks():
    """The cycle this check was written for: ``models/extras.py`` calling the model's private
    ``_seg_masks``. Put back into the real file, it is reported."""
    path = SRC / PACKAGE / "models" / "extras.py"
    source = path.read_text()
    assert "model.seg_masks(" in source
    bad = violations(
        source.replace("model.seg_masks(", "model._seg_masks("), "vmad_pipeline.models.extras"
    )
    assert [what for _, what in bad] == ["model._seg_masks"]
    assert violations(source, "vmad_pipeline.models.extras") == []


@pytest.mark.parametrize(
    ("snippet", "want"),
    [
        ("def f(model):\n    return model._seg_masks(1)\n", "model._seg_masks"),
        ("def f(model):\n    return model.llm._hidden\n", "model.llm._hidden"),
        ("class A:\n    def f(self):\n        return self.llm._x\n", "self.llm._x"),
        ("from vmad_pipeline.models.vmad import _helper\n", "vmad_pipeline.models.vmad._helper"),
        ("from .layer import _KEEP\n", "vmad_pipeline.models.amoe_lora.layer._KEEP"),
        ("from . import _register\n", "vmad_pipeline.models.amoe_lora._register"),
        ("import vmad_pipeline.models.llm as llm\nllm._peft\n", "llm._peft"),
        ("from vmad_pipeline.models import amoe_lora\namoe_lora._KEEP\n", "amoe_lora._KEEP"),
        ("import torch._dynamo\n", "torch._dynamo"),
        ("def f(m):\n    return getattr(m, '_seg_masks')\n", "m._seg_masks"),
    ],
)
def test_the_check_reports_each_kind_of_private_read(snippet, want):
    got = violations(snippet, "vmad_pipeline.models.amoe_lora", is_package=True)
    assert [what for _, what in got] == [want]


def test_the_check_allows_a_modules_own_names():
    snippet = (
        "from __future__ import annotations\n"
        "_CACHE = {}\n"
        "class Layer(Base):\n"
        "    _registry = {}\n"
        "    def f(self, x):\n"
        "        self._route(x)\n"
        "        super()._move(x)\n"
        "        getattr(self, '_first', None)\n"
        "        return Layer._registry, x.__class__, type(x).__name__\n"
        "    @classmethod\n"
        "    def g(cls):\n"
        "        return cls._registry\n"
    )
    assert violations(snippet, "vmad_pipeline.models.layer") == []
