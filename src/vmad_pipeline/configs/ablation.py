"""The ``ablation`` parameters (``conf/base/parameters_ablation.yml``): seeds, the overrides every
cell shares and the tables of cells (docs/ablation.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmad_pipeline.configs.base import check, from_dict


@dataclass(frozen=True)
class CellConfig:
    label: str = ""  # the row's name in the table (default: the cell id)
    overrides: dict[str, Any] = field(default_factory=dict)  # deep-merged into `train`


@dataclass(frozen=True)
class TableConfig:
    title: str = ""  # the table's heading (default: its id)
    default: bool = True  # computed by a plain run (else only when named in ablation.only)
    cells: dict[str, CellConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(bool(self.cells), "cells", "no cell configured")


@dataclass(frozen=True)
class AblationConfig:
    seeds: tuple[int, ...] = (0, 1, 2)
    train: dict[str, Any] = field(default_factory=dict)  # overrides of `train` for every cell
    evaluate: dict[str, Any] = field(default_factory=dict)  # overrides of `evaluate`
    progress: bool = True
    tables: dict[str, TableConfig] = field(default_factory=dict)
    only: tuple[str, ...] = ()  # run these tables only (default: those with default: true)

    def __post_init__(self) -> None:
        check(
            bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
            "seeds",
            f"a non-empty list of distinct integers, got {list(self.seeds)!r}",
        )
        check(bool(self.tables), "tables", "no table configured")
        unknown = [t for t in self.only if t not in self.tables]
        check(not unknown, "only", f"unknown table(s) {unknown}; known: {', '.join(self.tables)}")

    def chosen(self) -> list[str]:
        """The tables this run computes: ``only``, else every table with ``default: true``."""
        return list(self.only) or [t for t, table in self.tables.items() if table.default]


def parse_ablation_params(params: dict[str, Any] | None) -> AblationConfig:
    """``params:ablation`` -> :class:`AblationConfig`; a bad key anywhere names itself."""
    return from_dict(AblationConfig, params, "ablation")
