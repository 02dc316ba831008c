"""The ``train`` parameters (``conf/base/parameters_train.yml``): optimisation, loss weights, the
task mix and placement; ``train.model`` is :class:`~vmad_pipeline.configs.model.ModelConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vmad_pipeline.configs.base import check, check_placement, from_dict
from vmad_pipeline.configs.model import ModelConfig, WeightsConfig, describe_model


@dataclass(frozen=True)
class LossWeights:
    txt: float = 1.0  # causal-LM cross-entropy on answer tokens
    bce: float = 2.0
    dice: float = 0.5
    pbsd: float = 1.0  # DSSL: KL(p_v || p_t) per box
    patch_bce: float = 1.0  # DSSL: auxiliary box BCE that teaches the visual projection head


@dataclass(frozen=True)
class TaskMix:
    """Probabilities of the three training task types (method.md section 1)."""

    seg: float = 0.6  # "... output the defect segmentation result" -> "It is [SEG]."
    seg_answer: float = 0.2  # + description / impact analysis / suggestion
    vqa: float = 0.2  # the detection question: yes / no, where, what (and [SEG])

    def __post_init__(self) -> None:
        total = self.seg + self.seg_answer + self.vqa
        check(
            min(self.seg, self.seg_answer, self.vqa) >= 0 and total > 0,
            "task_mix",
            "weights must be >= 0 and not all zero",
        )


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 400
    batch_size: int = 8
    lr: float = 3e-4
    betas: tuple[float, ...] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    loss: LossWeights = field(default_factory=LossWeights)
    task_mix: TaskMix = field(default_factory=TaskMix)
    augment: bool = True  # flips, rotations, channel permutation, brightness/contrast
    paste_prob: float = 0.0  # share of mask-only samples given a pasted anomaly
    # share of normal images asked the detection question that get a pasted anomaly (and a true
    # "Yes" describing it): balances the yes / no answers the detection question is trained on
    detect_paste_prob: float = 0.0
    name_swap_prob: float = 0.0  # share of samples asked about a made-up object name
    # with mask evidence: share of samples whose evidence comes from the true mask, not the
    # drawn one (IAD-Unify mixes oracle and predicted regions in training)
    evidence_oracle: float = 0.5
    tokenizer_vocab: int = 600  # byte-level BPE vocabulary of the tiny preset's tokenizer
    num_threads: int = 0  # torch intra-op threads; 0 = torch default
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16
    gradient_checkpointing: bool = False  # the LLM's, for the real preset on a GPU
    progress: bool = True

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(len(self.betas) == 2, "betas", "must be two numbers")
        check(0 <= self.warmup_steps, "warmup_steps", "must be >= 0")
        check(0.0 <= self.paste_prob <= 1.0, "paste_prob", "must be in [0, 1]")
        check(0.0 <= self.name_swap_prob <= 1.0, "name_swap_prob", "must be in [0, 1]")
        check(0.0 <= self.detect_paste_prob <= 1.0, "detect_paste_prob", "must be in [0, 1]")
        check(0.0 <= self.evidence_oracle <= 1.0, "evidence_oracle", "must be in [0, 1]")
        check_placement(self.device, self.precision)


def parse_train_params(
    params: dict[str, Any], weights: dict[str, Any] | None = None
) -> tuple[TrainConfig, ModelConfig]:
    """``train`` parameters, with the local weight paths (``weights``) folded into the model."""
    rest = {k: v for k, v in params.items() if k != "model"}
    model = from_dict(ModelConfig, params.get("model"), "train.model")
    model = dataclasses.replace(model, weights=from_dict(WeightsConfig, weights, "weights"))
    return from_dict(TrainConfig, rest, "train"), model


def run_tags(train_params: dict[str, Any]) -> dict[str, str]:
    """The tags to filter and compare training runs by in the MLflow UI (the ``train``
    parameters, validated): :func:`~vmad_pipeline.configs.model.describe_model` as text
    (``on``/``off``; ``ltc_steps`` "-" when none), and the seed."""
    cfg, model = parse_train_params(dict(train_params))
    tags = {
        k: ("on" if v else "off") if isinstance(v, bool) else str(v)
        for k, v in describe_model(model).items()
    }
    return {**tags, "ltc_steps": tags["ltc_steps"] or "-", "seed": str(cfg.seed)}
