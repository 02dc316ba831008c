"""The ``split`` parameters (``conf/base/parameters_split.yml``): the zero-shot protocol and how
test classes are chosen (docs/splits.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmad_pipeline.configs.base import check, from_dict

PROTOCOLS = ("cross_category", "cross_dataset")
SHARED_NAMES = ("error", "exclude", "allow")


@dataclass(frozen=True)
class SplitConfig:
    protocol: str = "cross_category"  # cross_category | cross_dataset
    seed: int = 0  # seeds the draw of test classes (cross_category without explicit lists)
    sources: tuple[str, ...] = ()  # cross_category: the sources whose classes are split; () = all
    test_fraction: float = 0.4  # cross_category: share of the classes drawn as test classes
    test_count: int | None = None  # cross_category: number of test classes (wins over the fraction)
    test_classes: tuple[str, ...] = ()  # explicit test classes (win over count and fraction)
    train_classes: tuple[str, ...] = ()  # explicit training classes (default: all the others)
    train_sources: tuple[str, ...] = ()  # cross_dataset: sources to train on
    test_sources: tuple[str, ...] = ()  # cross_dataset: sources to test on
    shared_names: str = "error"  # cross_dataset: a test class name among training classes

    def __post_init__(self) -> None:
        check(self.protocol in PROTOCOLS, "protocol", f"must be one of {', '.join(PROTOCOLS)}")
        check(
            self.shared_names in SHARED_NAMES,
            "shared_names",
            f"must be one of {', '.join(SHARED_NAMES)}",
        )
        check(0 < self.test_fraction < 1, "test_fraction", "must be in (0, 1)")
        check(self.test_count is None or self.test_count >= 1, "test_count", "must be >= 1")
        for name in ("sources", "train_sources", "test_sources", "train_classes", "test_classes"):
            values = getattr(self, name)
            dup = sorted({v for v in values if values.count(v) > 1})
            check(not dup, name, f"listed twice: {', '.join(dup)}")
        if self.protocol == "cross_category":
            for name in ("train_sources", "test_sources"):
                check(
                    not getattr(self, name),
                    name,
                    "used by protocol cross_dataset only; cross_category splits the classes of "
                    "split.sources",
                )
        else:
            check(
                not self.sources,
                "sources",
                "used by protocol cross_category only; cross_dataset takes train_sources and "
                "test_sources",
            )
            check(bool(self.train_sources), "train_sources", "must name at least one source")
            check(bool(self.test_sources), "test_sources", "must name at least one source")
            both = sorted(set(self.train_sources) & set(self.test_sources))
            check(not both, "test_sources", f"also training sources: {', '.join(both)}")


def parse_split_params(params: dict[str, Any] | None) -> SplitConfig:
    return from_dict(SplitConfig, params, "split")
