"""The project's own import graph, read from the source (AST): what each module imports of the
package, and which third-party distributions it imports, at top level or anywhere (imports
inside functions count)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from helpers import REPO

SRC = REPO / "src"
PACKAGE = "vmad_pipeline"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, *, top_level_only: bool = False) -> set[str]:
    """Modules of the package that module ``name`` imports: anywhere in its file, or only in its
    top-level statements (what merely importing it runs). ``from a import b`` counts as ``a.b``
    when ``b`` is a module, else as ``a``."""
    known = modules()
    path = known[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & set(known)
            found |= subs or ({target} & set(known))
    return found - {name}


def third_party_in(source: str, *, top_level_only: bool = False) -> set[str]:
    """Top-level names of the third-party modules ``source`` imports (not the standard library,
    not the package): ``import a.b`` and ``from a.b import c`` give ``a``, and so does
    ``importlib.import_module("a.b")`` or ``__import__("a.b")`` with a literal name. Relative
    imports are the package's own."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition(".")[0])
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            found.add(node.args[0].value.partition(".")[0])
    return found - set(sys.stdlib_module_names) - {PACKAGE}


def third_party_of(name: str, *, top_level_only: bool = False) -> set[str]:
    """Top-level names of the third-party modules module ``name`` imports (``third_party_in``)."""
    return third_party_in(modules()[name].read_text(), top_level_only=top_level_only)


def _dynamic_import(call: ast.Call) -> bool:
    """``importlib.import_module("...")``, ``import_module("...")`` or ``__import__("...")``."""
    func = call.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
    )
    first = call.args[0] if call.args else None
    return named and isinstance(first, ast.Constant) and isinstance(first.value, str)
