"""The ``evaluate`` parameters (``conf/base/parameters_evaluate.yml``) as one validated dataclass:
placement and sizes, the image-score rule, the text and MMAD settings, the report sizes and the
optional external test tree (``evaluate.dataset``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmad_pipeline.configs.base import check, check_placement, from_dict, to_dict

SCORE_SOURCES = ("map_max", "p_yes", "fused")
SEEN_CLASSES = ("report", "refuse")
MAX_SHOTS = 64  # references per product an evaluation or a prediction takes at most


@dataclass(frozen=True)
class MmadEvalConfig:
    questions: str | None = None  # path of an MMAD-format mmad.json; null = no MMAD evaluation
    root: str | None = (
        None  # folder the image keys of mmad.json are relative to (default: its folder)
    )
    max_new_tokens: int = 4  # the answer is an option letter
    limit: int = 0  # evaluate the first N questions only (0 = all)
    # a model that reads references compares each image with its first similar normal template
    # (MMAD's 1-shot protocol); false: zero-shot
    references: bool = True

    def __post_init__(self) -> None:
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        check(self.limit >= 0, "limit", "must be >= 0 (0 = all questions)")


@dataclass(frozen=True)
class HierarchyConfig:
    """Level 4 of the hierarchical text evaluation (binary -> type -> location -> description
    and reasoning; the hierarchy's idea is MAU-Set's, its levels ours; docs/evaluation.md):
    anomalous images are also asked the description, impact and suggestion follow-ups, graded
    by ROUGE-L F against their RIAD answers. Levels 1 to 3 are the detection answer and the
    type / location follow-ups."""

    enabled: bool = True
    max_new_tokens: int = 48  # greedy budget of each long answer (RIAD answers: 10 to 40 words)

    def __post_init__(self) -> None:
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")


@dataclass(frozen=True)
class EvalDatasetConfig:
    """Evaluate on another MVTec-layout tree instead of the split's test classes."""

    root: str | None = None  # null: the split's unseen classes
    name: str = "external"  # source name of that tree in the reports

    def __post_init__(self) -> None:
        check(
            bool(self.name.strip()) and ":" not in self.name, "name", "a non-empty name without ':'"
        )


def check_backbone_input(image_size: int, levels: tuple[int, ...]) -> None:
    """The frozen backbone's input side and feature levels, as the comparisons read them."""
    check(image_size >= 32, "image_size", "must be >= 32")
    check(bool(levels) and all(0 <= i <= 3 for i in levels), "levels", "one or more of 0, 1, 2, 3")


@dataclass(frozen=True)
class ReferenceConfig:
    """The training-free reference beside the model (``evaluation/reference.py``): each test
    patch scored by its distance to the nearest patches of the other test images of its class
    (MuSc's mutual scoring), on the small preset's frozen ImageNet features. A different,
    transductive protocol: it reads the whole test set of a class at once."""

    enabled: bool = True
    image_size: int = 160  # the backbone's input side
    levels: tuple[int, ...] = (1, 2)  # backbone feature levels (0..3 = strides 4, 8, 16, 32)
    fraction: float = 0.3  # mean of the lowest share of the per-image nearest distances
    blur_sigma: float = 4.0  # Gaussian smoothing of the map, in pixels at eval_size

    def __post_init__(self) -> None:
        check_backbone_input(self.image_size, self.levels)
        check(0.0 < self.fraction <= 1.0, "fraction", "must be in (0, 1]")
        check(self.blur_sigma >= 0.0, "blur_sigma", "must be >= 0")


@dataclass(frozen=True)
class ReferencesConfig:
    """How an image is compared with k normal references of its product (``models.references``):
    the frozen ImageNet EfficientNet-Lite0 features of the small preset, the chosen levels at one
    grid, averaged over 3 x 3 neighbourhoods and L2-normalised per patch; each patch scored by
    its distance to the nearest reference patch (a coreset of at most ``max_patches`` per
    product). The defaults were chosen on the default split's unseen classes (seed 0,
    benchmarks/results/shots.md). The references-only decision threshold of each product: ``threshold`` on the
    references' leave-one-out image scores (docs/evaluation.md, "References")."""

    image_size: int = 256  # the backbone's input side
    levels: tuple[int, ...] = (1, 2)  # backbone levels (0..3 = strides 4, 8, 16, 32)
    stride: int = 8  # the patch grid: image_size / stride per side
    max_patches: int = 10_000  # coreset cap of one product's memory
    blur_sigma: float = 4.0  # Gaussian smoothing of the map, in pixels at eval_size
    # the image threshold from the references alone: "loo_max" (the highest leave-one-out score)
    # | "prediction@<p>" (the upper bound of a one-sided Student-t prediction interval of level p
    # for one more normal image's score, from the leave-one-out scores; needs k >= 2)
    threshold: str = "prediction@0.95"
    # the same choice for the model with references (its scores are another scale: P(yes) and
    # its mask saturate); never below the model's own calibrated threshold. loo_max by default
    # (FPR 0.067 / recall 0.956 at k = 4 over seeds 0-2; prediction@0.9 0.027 / 0.878; the
    # README's "References")
    model_threshold: str = "loo_max"

    def __post_init__(self) -> None:
        check_backbone_input(self.image_size, self.levels)
        check(
            self.stride >= 4 and self.image_size % self.stride == 0,
            "stride",
            f"must be >= 4 and divide image_size ({self.image_size})",
        )
        check(self.max_patches >= 1, "max_patches", "must be >= 1")
        check(self.blur_sigma >= 0.0, "blur_sigma", "must be >= 0")
        for key in ("threshold", "model_threshold"):
            rule = getattr(self, key)
            ok = rule == "loo_max" or (rule.startswith("prediction@") and _unit(rule[11:]))
            check(ok, key, "loo_max or prediction@<p> with 0 < p < 1")


def _unit(text: str) -> bool:
    try:
        return 0.0 < float(text) < 1.0
    except ValueError:
        return False


@dataclass(frozen=True)
class ScoreRule:
    """How an image's anomaly score is made (metrics.md): ``map_max`` (max of the anomaly map),
    ``p_yes`` (P("Yes") vs "No" as the first answer token of the detection question), or
    ``fused`` = w * p_yes + (1 - w) * map_max. Evaluation, the predictor and the registered model
    all score by it."""

    source: str = "map_max"
    fusion_weight: float = 0.5  # w of the fused score (weight of P(yes))

    def __post_init__(self) -> None:
        check(
            self.source in SCORE_SOURCES,
            "source",
            f"{self.source!r} is not one of {', '.join(SCORE_SOURCES)}",
        )
        check(0.0 <= self.fusion_weight <= 1.0, "fusion_weight", "must be in [0, 1]")


@dataclass(frozen=True)
class EvaluateConfig:
    eval_size: int = 128  # evaluation resolution (square), recorded with the metrics
    max_new_tokens: int = 24  # greedy budget of the detection answer (holds [SEG] and the text)
    # the answers' location and defect-type words read from the drawn mask and the type head
    # (inference.grounding, docs/words.md); false: the LLM's own words
    ground_words: bool = True
    n_overlays: int = 3  # test images per class in the overlay figure
    batch_size: int = 16
    fpr_limit: float = 0.3
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16
    progress: bool = True
    # Image score: map_max | p_yes | fused, and the fused score's weight (see ScoreRule).
    score_rule: ScoreRule = field(default_factory=ScoreRule)
    curve_points: int = 201  # FPR grid of the PRO curve files (the AUPRO number is exact)
    # after the detection answer, anomalous images are asked "Where is it?" and "What kind of
    # defect is it?" (multi-turn chat); their answers are graded as follow-up accuracies
    follow_ups: bool = True
    # the description / impact / suggestion follow-ups too (level 4; needs follow_ups)
    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)
    # With region tokens: the detection answers again with no region and with the true region
    # (answer, location and defect-type accuracy per setting; the default run is "predicted").
    region_settings: bool = True
    mmad: MmadEvalConfig = field(default_factory=MmadEvalConfig)
    dataset: EvalDatasetConfig = field(default_factory=EvalDatasetConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    # Evaluation with k normal references of each test class, drawn (seeded by shot_seed) from
    # its normal training images, never its test images; 0 = zero-shot (the top level of
    # metrics.json). At each k > 0 the model with those references (metrics.json "shots") and
    # the nearest-normal-patch baseline (shots_metrics.json) are scored.
    shots: tuple[int, ...] = (0, 4)
    shot_seed: int = 0
    # the model in batch mode too: each test image against the other test images of its class
    # (no labels; metrics.json shots.batch). Only for a model that reads references.
    batch_references: bool = True
    references: ReferencesConfig = field(default_factory=ReferencesConfig)
    # Classes the model was trained on, met in another tree or MMAD: report them in a separate,
    # labelled "seen" section (never in the unseen mean) | refuse to evaluate. (In the split's
    # own test classes they are always an error: the split changed after training.)
    seen_classes: str = "report"

    def __post_init__(self) -> None:
        check_placement(self.device, self.precision)
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        check(
            all(k >= 0 for k in self.shots) and len(set(self.shots)) == len(self.shots),
            "shots",
            f"distinct numbers of references >= 0, got {list(self.shots)}",
        )
        check(max(self.shots, default=0) <= MAX_SHOTS, "shots", f"at most {MAX_SHOTS} references")
        check(self.curve_points >= 2, "curve_points", "must be >= 2")
        check(0.0 < self.fpr_limit <= 1.0, "fpr_limit", f"must be in (0, 1], got {self.fpr_limit}")
        check(self.eval_size >= 1, "eval_size", "must be >= 1")
        check(self.n_overlays >= 0, "n_overlays", "must be >= 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(
            self.follow_ups or not self.hierarchy.enabled,
            "hierarchy.enabled",
            "levels 2 and 3 are the follow-up answers: set follow_ups: true, or this to false",
        )
        check(
            self.seen_classes in SEEN_CLASSES,
            "seen_classes",
            f"{self.seen_classes!r} is not one of {', '.join(SEEN_CLASSES)}",
        )

    def model_config(self) -> dict[str, Any]:
        """What a registered model is logged with (its MLflow ``model_config``): the score rule
        and the decoding budget, so that it scores an image exactly as this evaluation did;
        :func:`from_model_config` reads it back."""
        return {
            "score_rule": to_dict(self.score_rule),
            "max_new_tokens": self.max_new_tokens,
            "ground_words": self.ground_words,
        }


# Keys of an older layout, named with where they moved.
MOVED = {
    "score_source": "evaluate.score_rule.source",
    "fusion_weight": "evaluate.score_rule.fusion_weight",
}


def parse_evaluate_params(params: dict[str, Any] | None) -> EvaluateConfig:
    """``params:evaluate`` -> :class:`EvaluateConfig`; a bad key anywhere (``dataset.roots``)
    names itself."""
    for old, new in MOVED.items():
        check(old not in (params or {}), f"evaluate.{old}", f"moved to {new}")
    return from_dict(EvaluateConfig, params, "evaluate")


def from_model_config(config: dict[str, Any] | None) -> EvaluateConfig:
    """The evaluate settings a registered model was logged with (:meth:`EvaluateConfig.
    model_config`); other keys of ``config`` (weights, serving limits) are not read here."""
    config = config or {}
    keys = ("score_rule", "max_new_tokens", "ground_words")
    return from_dict(EvaluateConfig, {k: config[k] for k in keys if k in config}, "model_config")
