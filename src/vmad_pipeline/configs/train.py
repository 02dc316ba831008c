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
    # AMoE-LoRA's Switch balancing loss (1 at even expert use; train.model.adapter: amoe_lora)
    balance: float = 0.01


@dataclass(frozen=True)
class TaskMix:
    """Probabilities of the training task types (method.md section 1, and multi-turn chat)."""

    seg: float = 0.6  # "... output the defect segmentation result" -> "It is [SEG]."
    seg_answer: float = 0.2  # + description / impact analysis / suggestion
    vqa: float = 0.2  # the detection question: yes / no, where, what (and [SEG])
    # the detection question, then one follow-up (where / what kind / describe / how severe /
    # what to do), answered from the same image (prompts.FOLLOW_UPS)
    chat: float = 0.0

    def weights(self) -> list[float]:
        """In the order of ``training.samples.TASKS``."""
        return [self.seg, self.seg_answer, self.vqa, self.chat]

    def __post_init__(self) -> None:
        check(
            min(self.weights()) >= 0 and sum(self.weights()) > 0,
            "task_mix",
            "weights must be >= 0 and not all zero",
        )


STRATEGIES = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")


@dataclass(frozen=True)
class EngineConfig:
    """How many local worker processes train and how they share the model (training/engine.py).
    ``processes``: one GPU each where CUDA has them, else CPU processes (gloo)."""

    processes: int = 1
    strategy: str = "ddp"  # ddp | fsdp | deepspeed_zero2 | deepspeed_zero3
    # DeepSpeed's JSON config; empty: conf/engine/<strategy>.json
    deepspeed_config: str = ""

    def __post_init__(self) -> None:
        check(self.processes >= 1, "processes", "must be >= 1")
        check(self.strategy in STRATEGIES, "strategy", f"one of {', '.join(STRATEGIES)}")


@dataclass(frozen=True)
class DataConfig:
    """The streaming loader (training/data.py)."""

    workers: int = 0  # DataLoader worker processes per training process; 0 = in the main one
    on_error: str = "raise"  # an unreadable image: raise (names the file) | skip (counted)

    def __post_init__(self) -> None:
        check(self.workers >= 0, "workers", "must be >= 0")
        check(self.on_error in ("raise", "skip"), "on_error", "one of raise, skip")


@dataclass(frozen=True)
class CheckpointConfig:
    """Training checkpoints for exact resume (training/state.py)."""

    every_steps: int = 0  # 0 = none (a SIGTERM still writes one)
    keep: int = 2  # the last N are kept
    dir: str = "data/06_models/training_state"
    # the anomaly expert's stage-1 results, one file per distinct stage-1 input (reused)
    expert_dir: str = "data/06_models/expert_stage"

    def __post_init__(self) -> None:
        check(self.every_steps >= 0, "every_steps", "must be >= 0")
        check(self.keep >= 1, "keep", "must be >= 1")
        check(bool(self.dir), "dir", "must be a directory path")


@dataclass(frozen=True)
class ValidationConfig:
    """A held-out slice of the training classes, scored while training (never a test class)."""

    fraction: float = 0.0  # share of each training class's images held out; 0 = no validation
    max_images: int = 64  # at most this many, drawn evenly over classes
    anomalous: bool = True  # hold out defect images too (false: normal images only)

    def __post_init__(self) -> None:
        check(0.0 <= self.fraction < 1.0, "fraction", "must be in [0, 1)")
        check(self.max_images >= 1, "max_images", "must be >= 1")


def check_threshold_rule(rule: str, key: str) -> None:
    """``f1`` (the F1-max threshold), ``fpr@<rate>`` (the threshold that passes that share of
    normal images, or of normal pixels), ``rate`` in (0, 1), or ``fixed@<value>`` in [0, 1]."""
    ok = rule == "f1"
    for prefix, low, high, closed in (("fpr@", 0.0, 1.0, False), ("fixed@", 0.0, 1.0, True)):
        if rule.startswith(prefix):
            try:
                v = float(rule[len(prefix) :])
                ok = (low <= v <= high) if closed else (low < v < high)
            except ValueError:
                ok = False
    check(
        ok,
        key,
        f"{rule!r} is not f1, fpr@<rate in (0, 1)> (e.g. fpr@0.05) or fixed@<value in [0, 1]>",
    )


@dataclass(frozen=True)
class CalibrationConfig:
    """How the decision thresholds stored with the model are chosen on the validation slice
    (evaluation/threshold_rules.py)."""

    image: str = "fpr@0.05"  # f1 | fpr@<rate> | fixed@<value>: image score threshold
    # f1 | fpr@<rate> | fixed@<value>: the anomaly-map threshold of the mask. fixed@0.5 (the
    # mask loss's boundary) by default: on a validation slice of normal images only, the maps
    # are ~0 and fpr@0.05 landed at 2.4e-7, masking whole images of unseen classes
    pixel: str = "fixed@0.5"

    def __post_init__(self) -> None:
        check_threshold_rule(self.image, "image")
        check_threshold_rule(self.pixel, "pixel")


@dataclass(frozen=True)
class TypeHeadConfig:
    """The defect-type head fitted after training (``training.type_head``, docs/words.md): the
    answer names the type of what is inside its drawn mask, or abstains."""

    enabled: bool = True
    levels: tuple[int, ...] = (1, 2, 3)  # the tower's native levels read
    grid: int = 16  # the descriptor's grid
    # > 0: the tower reads a square cut around the mask (this times its box's longer side, at
    # least a quarter of the image), resized to input_size; 0: the whole image. docs/words.md,
    # "Choosing the head", has the figures of each choice
    crop: float = 1.0
    # the size the tower reads (None: its own; a CLIP tower, whose positions are fixed, needs it)
    input_size: int | None = 224
    c: float = 0.1  # the logistic regression's inverse regularisation, on standardised features
    balanced: bool = True  # each type weighs the same in the fit, however many images it has
    min_precision: float = 0.85  # the abstention threshold's target, on held-out classes
    # and the share of a held-out type's defects it must leave unnamed (a type no training class
    # has: a new product's own kind of defect); 0: no such target
    min_novel_abstention: float = 0.8
    # a region far from every trained type goes unnamed whatever its probability (the gate's
    # distance chosen with the probability, on the same held-out classes and types)
    novelty_gate: bool = True

    def __post_init__(self) -> None:
        bad = self.grid < 1 or not self.levels or self.crop < 0 or self.c <= 0
        shares = 0 < self.min_precision <= 1 and 0 <= self.min_novel_abstention <= 1
        if bad or not shares:
            raise ValueError(f"train.type_head: invalid {self}")


# train.synthesis: where a paste_prob (or detect_paste_prob) sample's anomaly comes from
SYNTHESIS = ("paste", "generated", "both")

# Parameters that change how a run goes but never what it computes: a checkpoint written under
# other values of these still resumes exactly (training/state.py).
RUN_ONLY = ("progress", "num_threads", "data.workers", "checkpoint")


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
    # what those samples (and detect_paste_prob's) get: paste (CutPaste-style) | generated (a
    # defect painted by the mask-guided generator, docs/generation.md) | both (50/50 per sample)
    synthesis: str = "paste"
    # share of normal images asked the detection question that get a pasted anomaly (and a true
    # "Yes" describing it): balances the yes / no answers the detection question is trained on
    detect_paste_prob: float = 0.0
    name_swap_prob: float = 0.0  # share of samples asked about a made-up object name
    # with mask evidence: share of samples whose evidence comes from the true mask, not the
    # drawn one (IAD-Unify mixes oracle and predicted regions in training)
    evidence_oracle: float = 0.5
    # with the reference cue (train.model.references): the k normal references of each sample,
    # drawn per sample from this set among the other normal training images of its class and
    # source, augmented as the sample is (docs/references.md); 0 = zero-shot samples
    reference_shots: tuple[int, ...] = (0, 1, 2, 4)
    # of the samples with references: the share given a structure they and their references
    # share (the same patch at the same place; training.samples.shared_structure), not a defect
    shared_paste_prob: float = 0.5
    tokenizer_vocab: int = 600  # byte-level BPE vocabulary of the tiny preset's tokenizer
    num_threads: int = 0  # torch intra-op threads; 0 = torch default
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16
    gradient_checkpointing: bool = False  # the LLM's, for the real preset on a GPU
    progress: bool = True
    # batch_size is the global batch of one optimiser step: processes x grad_accum_steps
    # micro-batches of batch_size / (processes x grad_accum_steps) images each
    grad_accum_steps: int = 1
    engine: EngineConfig = field(default_factory=EngineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    type_head: TypeHeadConfig = field(default_factory=TypeHeadConfig)
    eval_every: int = 0  # steps between validation passes; 0 = only at the end (if any)
    keep: str = "last"  # last | best (by the validation pixel AUROC)

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.grad_accum_steps >= 1, "grad_accum_steps", "must be >= 1")
        check(
            self.batch_size % (self.grad_accum_steps * self.engine.processes) == 0,
            "batch_size",
            f"{self.batch_size} is not divisible by grad_accum_steps x engine.processes "
            f"({self.grad_accum_steps} x {self.engine.processes})",
        )
        check(self.eval_every >= 0, "eval_every", "must be >= 0")
        check(self.keep in ("last", "best"), "keep", "one of last, best")
        check(
            self.keep == "last" or self.validation.fraction > 0,
            "keep",
            "best needs a validation slice (validation.fraction > 0)",
        )
        check(self.lr > 0, "lr", "must be > 0")
        check(len(self.betas) == 2, "betas", "must be two numbers")
        check(0 <= self.warmup_steps, "warmup_steps", "must be >= 0")
        check(0.0 <= self.paste_prob <= 1.0, "paste_prob", "must be in [0, 1]")
        check(
            self.synthesis in SYNTHESIS,
            "synthesis",
            f"{self.synthesis!r} is not one of {', '.join(SYNTHESIS)}",
        )
        check(0.0 <= self.name_swap_prob <= 1.0, "name_swap_prob", "must be in [0, 1]")
        check(0.0 <= self.detect_paste_prob <= 1.0, "detect_paste_prob", "must be in [0, 1]")
        check(0.0 <= self.evidence_oracle <= 1.0, "evidence_oracle", "must be in [0, 1]")
        check(0.0 <= self.shared_paste_prob <= 1.0, "shared_paste_prob", "must be in [0, 1]")
        check(
            len(self.reference_shots) >= 1 and all(0 <= k <= 16 for k in self.reference_shots),
            "reference_shots",
            f"one or more k in [0, 16], got {list(self.reference_shots)}",
        )
        check_placement(self.device, self.precision)

    @property
    def micro_batch(self) -> int:
        """Images per process per forward pass."""
        return self.batch_size // (self.grad_accum_steps * self.engine.processes)


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
