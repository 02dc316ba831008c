"""Shared test helpers: tiny model configs (``models``), tiny real-format checkpoints
(``checkpoints``), dataset tree writers (``trees``) and Kedro project copies (``project``)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the project root
