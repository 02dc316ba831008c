"""The image anomaly score: the one rule (metrics.md, method.md section 6).

Evaluation, the predictor, the MLflow pyfunc and the ablation all score an image here, by a
:class:`~vmad_pipeline.configs.evaluate.ScoreRule`: ``map_max`` (max of the anomaly map),
``p_yes`` (P("Yes") of the detection question) or ``fused`` = w * p_yes + (1 - w) * map_max.
Both parts lie in [0, 1] (a sigmoid map, a probability), so they are combined as they are.
"""

from __future__ import annotations

import numpy as np

from vmad_pipeline.configs.evaluate import ScoreRule


def map_max(maps: np.ndarray) -> np.ndarray:
    """N x H x W anomaly maps -> N maxima (float64)."""
    maps = np.asarray(maps)
    if not len(maps):
        return np.zeros(0)
    return maps.reshape(len(maps), -1).max(1).astype(np.float64)


def image_scores(map_maxima: np.ndarray, p_yes: np.ndarray | None, rule: ScoreRule) -> np.ndarray:
    """The image scores of ``rule`` from the maps' maxima and P(yes) (needed unless
    ``map_max``)."""
    maxima = np.asarray(map_maxima, dtype=np.float64)
    if rule.source == "map_max":
        return maxima
    if p_yes is None:
        raise ValueError(
            f"evaluate.score_source {rule.source!r} needs P(yes) in the predictions "
            "(the predictor computes it when the rule asks for it)"
        )
    p = np.asarray(p_yes, dtype=np.float64)
    if rule.source == "p_yes":
        return p
    return rule.fusion_weight * p + (1.0 - rule.fusion_weight) * maxima
