"""The install cannot end in a mismatched environment: the README's commands and .ci/run install
with constraints.txt (the versions the suite passed with), which matches what is installed here;
a torch / torchvision pair that does not work together is one line that names the fix."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def quick_start() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.split("```", 1)[0].strip() for b in section.split("```bash\n")[1:]]


def test_the_readme_and_ci_install_with_the_constraints():
    run, tests = quick_start()[:2]
    assert run == "python3 -m pip install -e . -c constraints.txt && kedro run"
    assert (
        tests == 'python3 -m pip install -q -e ".[test]" -c constraints.txt && python3 -m pytest -q'
    )
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines() if line.strip()]
    assert ci[-1] == tests  # CI runs the README's test command verbatim


def pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))


def test_the_constraints_are_what_the_suite_runs_with():
    pinned = pins()
    assert {"torch", "torchvision", "transformers", "peft", "kedro", "mlflow"} <= set(pinned)
    differ = {}
    for name, version in pinned.items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # pinned for another platform's needs, not installed here
        if found.split("+", 1)[0] != version.split("+", 1)[0]:
            differ[name] = (version, found)
    assert not differ, (
        f"installed versions differ from constraints.txt {differ}: install with "
        '`pip install -e ".[test]" -c constraints.txt`, or after a green suite refresh it: '
        "python3 tools/constraints.py"
    )


def test_a_torch_pair_that_does_not_work_together_is_one_line(monkeypatch):
    from vmad_pipeline.install_check import InstallError, check_torch_pair

    check_torch_pair()  # this machine's pair works
    monkeypatch.setitem(sys.modules, "torchvision.ops", None)  # as a mismatched build fails
    with pytest.raises(InstallError) as err:
        check_torch_pair()
    message = str(err.value)
    assert re.search(r"torch \S+ and torchvision \S+ do not work together", message)
    assert "-c constraints.txt" in message and "\n" not in message
