"""Write constraints.txt: the exact versions of the project's dependencies (and theirs, with the
test extra) as installed in this Python, where the suite passed.

    python3 -m pip install -e ".[test]" -c constraints.txt   # what the README and .ci/run do
    python3 tools/constraints.py                             # refresh, after a green suite

The closure is read from the installed distributions' own metadata (importlib.metadata):
each requirement whose environment marker holds here, and the extras asked for. A constraint
only pins a package that something installs; it installs nothing by itself.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "vmad-pipeline"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(project: str, extras: tuple[str, ...]) -> dict[str, str]:
    """{canonical name: installed version} of everything ``project`` (with ``extras``) needs."""
    found: dict[str, str] = {}
    todo = [(project, set(extras))]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        name, wanted = todo.pop()
        key = (canonical(name), frozenset(wanted))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a marker-less optional dependency not installed here
        if canonical(name) != canonical(project):
            found[canonical(name)] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            env_ok = any(
                req.marker is None or req.marker.evaluate({"extra": e}) for e in (wanted or {""})
            )
            if env_ok:
                todo.append((req.name, set(req.extras)))
    return found


def main() -> None:
    pins = closure(PROJECT, ("test",))
    lines = [
        "# The versions the suite passed with (python3 tools/constraints.py writes this file).",
        f"# Python {sys.version.split()[0]}. Used by the README's install commands and .ci/run:",
        '#   python3 -m pip install -e ".[test]" -c constraints.txt',
        *(f"{name}=={version}" for name, version in sorted(pins.items())),
    ]
    (ROOT / "constraints.txt").write_text("\n".join(lines) + "\n")
    print(f"constraints.txt: {len(pins)} packages")


if __name__ == "__main__":
    main()
