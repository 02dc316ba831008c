"""The ``evaluate`` parameters (``conf/base/parameters_evaluate.yml``) as a validated dataclass.

:class:`EvaluateConfig` extends :class:`vmad_pipeline.configs.EvalConfig` (placement, sizes) with
the score source, the text and MMAD settings and the report sizes. (It lives here because
``configs.py`` belongs to another part of the project; it can move into ``EvalConfig`` as is.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmad_pipeline.configs import ConfigError, EvalConfig, from_dict

SCORE_SOURCES = ("map_max", "p_yes", "fused")


@dataclass(frozen=True)
class MmadEvalConfig:
    questions: str | None = None  # path of an MMAD-format mmad.json; null = no MMAD evaluation
    root: str | None = (
        None  # folder the image keys of mmad.json are relative to (default: its folder)
    )
    max_new_tokens: int = 4  # the answer is an option letter
    limit: int = 0  # evaluate the first N questions only (0 = all)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens: must be >= 1")
        if self.limit < 0:
            raise ConfigError("limit: must be >= 0 (0 = all questions)")


@dataclass(frozen=True)
class EvaluateConfig(EvalConfig):
    # Image score: map_max (max of the anomaly map), p_yes (P("Yes") vs "No" as the first answer
    # token of the detection question), or fused = w * p_yes + (1 - w) * map_max.
    score_source: str = "map_max"
    fusion_weight: float = 0.5  # w of the fused score (weight of P(yes))
    answer_max_new_tokens: int = 48  # greedy budget for the detection answer (text metrics)
    curve_points: int = 201  # FPR grid of the PRO curve files (the AUPRO number is exact)
    mmad: MmadEvalConfig = field(default_factory=MmadEvalConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score_source not in SCORE_SOURCES:
            raise ConfigError(
                f"score_source: {self.score_source!r} is not one of {', '.join(SCORE_SOURCES)}"
            )
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise ConfigError(f"fusion_weight: must be in [0, 1], got {self.fusion_weight}")
        if self.answer_max_new_tokens < 1:
            raise ConfigError("answer_max_new_tokens: must be >= 1")
        if self.curve_points < 2:
            raise ConfigError("curve_points: must be >= 2")
        if not 0.0 < self.fpr_limit <= 1.0:
            raise ConfigError(f"fpr_limit: must be in (0, 1], got {self.fpr_limit}")
        if self.eval_size < 1:
            raise ConfigError("eval_size: must be >= 1")
        if self.n_overlays < 0:
            raise ConfigError("n_overlays: must be >= 0")


def parse_eval_params(params: dict[str, Any]) -> EvaluateConfig:
    """The ``evaluate`` parameters without ``dataset`` (read by select_eval_set), validated."""
    return from_dict(
        EvaluateConfig, {k: v for k, v in params.items() if k != "dataset"}, "evaluate"
    )
