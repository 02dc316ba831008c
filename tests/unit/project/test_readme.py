"""The README's and docs' measured tables and examples are what the benchmarks' results hold
(``benchmarks/readme.py`` writes them): a figure typed by hand, or results updated without the
README, fails here."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def readme():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import readme as module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


@pytest.mark.parametrize("document", ["README.md", "docs/chat.md", "docs/measurements.md"])
def test_each_measured_block_is_what_its_results_give(readme, document):
    assert document in readme.DOCUMENTS
    text = (REPO / document).read_text()
    names = re.findall(r"<!-- measured: (\w+) -->", text)
    assert names, f"{document} has no measured block"
    assert readme.rendered(text) == text, f"{document}: run python benchmarks/readme.py"


def test_a_figure_typed_by_hand_is_caught_and_every_block_names_its_commit(readme):
    text = (REPO / "README.md").read_text()
    headline = text.split("<!-- measured: headline -->", 1)[1].split("<!-- /measured -->")[0]
    edited = text.replace(headline, headline.replace("| **VMAD", "| **VMAD (hand-edited)", 1))
    assert edited != text and readme.rendered(edited) == text  # written back from the results
    for name, render in readme.RENDER.items():
        assert re.search(r"commit `[0-9a-f]{7,}`", render()), name
    # a benchmark whose runs HEAD moved under names each commit, each in backticks
    assert readme.commits("9ed29f8, b3766ab") == "`9ed29f8`, `b3766ab`"


def test_the_examples_are_the_answers_stored_with_their_commit(readme):
    stored = json.loads((REPO / "benchmarks/results/readme_examples.json").read_text())
    chat = (REPO / "docs/chat.md").read_text()
    assert stored["chat"] in chat and stored["chat_references"] in chat
    assert f'"answer": "{stored["served"]["answer"]}"' in (REPO / "README.md").read_text()
