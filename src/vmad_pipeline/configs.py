"""Frozen, validated dataclasses mirroring ``conf/base/parameters_*.yml``.

Every parameter block that code consumes is turned into one of these with
:func:`from_dict`, which rejects unknown keys and wrong types with an error that names
the full key (``train.model.projector.name``), so a typo in YAML or ``--params`` fails
loudly instead of silently using a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

PRESETS = ("tiny", "llava7b_sam_h")  # tiny: random init, trained here; real: local checkpoints
PROJECTORS = ("mlp", "avgpool", "resampler", "ldpv2", "ltc")
MODEL_PARTS = ("vision", "projector", "llm", "sam_encoder", "sam_decoder", "seg_head", "dssl")


class ConfigError(ValueError):
    """A parameter is missing, unknown or out of range; the message names the key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key)
    if origin is tuple:
        _check(isinstance(value, list | tuple), key, f"expected a list, got {value!r}")
        (inner, *_rest) = typing.get_args(tp)
        return tuple(_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _check(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"expected a number, got {value!r}",
        )
        return float(value)
    if tp is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool),
            key,
            f"expected an integer, got {value!r}",
        )
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if tp is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, key: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly nested) mapping, validating keys and types."""
    data = {} if data is None else data
    _check(isinstance(data, dict), key or cls.__name__, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    _check(
        not unknown,
        f"{key}.{unknown[0]}" if key and unknown else (unknown or [""])[0],
        f"unknown parameter; valid keys here: {', '.join(sorted(names))}",
    )
    kwargs = {k: _convert(hints[k], v, f"{key}.{k}" if key else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{key}.{err}" if key else str(err)) from None
    except TypeError as err:
        raise ConfigError(f"{key or cls.__name__}: {err}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of a config (for checkpoints and MLflow params)."""
    return dataclasses.asdict(obj)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 64  # CLIP input side (336 in LLaVA-1.5)
    patch_size: int = 8  # CLIP patch (14 in ViT-L/14)
    hidden_size: int = 64  # CLIP width C (1024 in ViT-L)
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    select_layer: int = -1  # hidden state fed to the projector (LLaVA: -2, the penultimate layer)

    def __post_init__(self) -> None:
        _check(
            self.image_size % self.patch_size == 0, "image_size", "must be a multiple of patch_size"
        )
        _check(
            self.hidden_size % self.num_heads == 0, "hidden_size", "must be divisible by num_heads"
        )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class LtcConfig:
    """LTC's four parts (method.md section 4), each switchable for the Table IV ablation rows:
    baseline = all off (plain 2x2 average pool + MLP), "+ injection" = injection,
    "+ multi-level" = injection + multi_level, full LTC = all on."""

    local_context: bool = True  # Local-Context Learner: [self-attn, deformable attn, FFN] blocks
    spatial_downsampler: bool = True  # residual conv blocks, adaptive pool, residual blocks
    injection: bool = True  # coarse-to-fine point-to-region attention (TokenPacker)
    multi_level: bool = True  # keys/values from several CLIP layers (else the selected layer)
    levels: tuple[int, ...] = (12, 16, 22, 23)  # CLIP hidden-state indices (0 = embeddings)
    blocks: int = 1  # Local-Context Learner blocks
    heads: int = 4  # attention heads (self, deformable, point-to-region)
    points: int = 4  # deformable attention sampling points per head
    conv_blocks: int = 1  # residual blocks before and after the adaptive pool

    def __post_init__(self) -> None:
        _check(
            min(self.blocks, self.heads, self.points, self.conv_blocks) >= 1,
            "blocks",
            "blocks, heads, points and conv_blocks must be >= 1",
        )
        _check(not self.multi_level or len(self.levels) >= 1, "levels", "needs at least one layer")


@dataclass(frozen=True)
class ProjectorConfig:
    name: str = "avgpool"  # one of PROJECTORS
    pool: int = 2  # avgpool / resampler / ldpv2 / ltc: (grid / pool)^2 tokens (576 -> 144 at 2)
    depth: int = 1  # resampler: cross-attention layers
    heads: int = 4  # resampler: attention heads (must divide the vision width)
    ltc: LtcConfig = field(default_factory=LtcConfig)

    def __post_init__(self) -> None:
        _check(
            self.name in PROJECTORS,
            "name",
            f"unknown projector {self.name!r}; known: {', '.join(PROJECTORS)}",
        )
        _check(self.pool >= 1, "pool", "must be >= 1")
        _check(self.depth >= 1, "depth", "must be >= 1")
        _check(self.heads >= 1, "heads", "must be >= 1")


@dataclass(frozen=True)
class LLMConfig:
    hidden_size: int = 128  # d_llm (4096 in LLaMA-7B)
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    max_positions: int = 512

    def __post_init__(self) -> None:
        _check(
            self.hidden_size % self.num_heads == 0, "hidden_size", "must be divisible by num_heads"
        )


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        _check(self.r >= 1, "r", "must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class SamConfig:
    image_size: int = 128  # SAM input side (1024 in SAM)
    patch_size: int = 8  # (16 in SAM)
    embed_dim: int = 96  # encoder width (1280 in ViT-H)
    depth: int = 2
    num_heads: int = 4
    window_size: int = 0  # 0 = global attention in every block
    global_attn_indexes: tuple[int, ...] = ()
    prompt_dim: int = 64  # d_sam, prompt / decoder width (256 in SAM)
    decoder_depth: int = 2
    decoder_mlp_dim: int = 256
    decoder_heads: int = 4

    def __post_init__(self) -> None:
        _check(
            self.image_size % self.patch_size == 0, "image_size", "must be a multiple of patch_size"
        )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class DsslConfig:
    """Defect-Sensitive Structure Learning (method.md section 5); training-time only."""

    enabled: bool = True
    boxes: int = 32  # N_b random boxes per image
    box_min: float = 0.0625  # box side range, as a fraction of the image side (1/16 .. 1/4)
    box_max: float = 0.25
    abnormal_fraction: float = 0.1  # a box is abnormal when > this share of it is in the mask
    queue_size: int = 256  # K global features kept per training class and state
    tau: float = 0.07  # temperature of the similarity distributions
    proj_dim: int = 128  # visual projection head output (z_i, g)
    n_ctx: int = 4  # learnable context vectors of the semantic tokens (CoCoOp)
    meta_hidden: int = 32  # Meta-Net bottleneck width (Linear, ReLU, Linear)
    roi_size: int = 2  # ROI-align output side, mean-pooled afterwards
    classes: tuple[str, ...] = ()  # training classes, one queue row each; set at build time

    def __post_init__(self) -> None:
        _check(self.boxes >= 1, "boxes", "must be >= 1")
        _check(0 < self.box_min <= self.box_max <= 1, "box_min", "need 0 < box_min <= box_max <= 1")
        _check(0 <= self.abnormal_fraction < 1, "abnormal_fraction", "must be in [0, 1)")
        _check(self.queue_size >= 1, "queue_size", "must be >= 1")
        _check(self.tau > 0, "tau", "must be > 0")
        _check(
            min(self.proj_dim, self.n_ctx, self.meta_hidden, self.roi_size) >= 1,
            "proj_dim",
            "proj_dim, n_ctx, meta_hidden and roi_size must be >= 1",
        )


@dataclass(frozen=True)
class WeightsConfig:
    """Local weight files of the real preset (``weights:`` in conf/local/parameters_weights.yml)."""

    llava_dir: str | None = None  # HF-format LLaVA-1.5-7B directory (LlavaForConditionalGeneration)
    sam_checkpoint: str | None = None  # original SAM checkpoint, e.g. sam_vit_h_4b8939.pth


@dataclass(frozen=True)
class ModelConfig:
    """The whole VMAD model; saved with every checkpoint and rebuilt from it."""

    preset: str = "tiny"  # one of PRESETS
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    dssl: DsslConfig = field(default_factory=DsslConfig)
    frozen: tuple[
        str, ...
    ] = ()  # parts of MODEL_PARTS kept frozen (real preset: vision, sam_encoder)
    vocab_size: int = 0  # set from the tokenizer at build time
    weights: WeightsConfig = field(default_factory=WeightsConfig)  # set at build time (real preset)

    def __post_init__(self) -> None:
        _check(
            self.preset in PRESETS,
            "preset",
            f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}",
        )
        bad = [p for p in self.frozen if p not in MODEL_PARTS]
        _check(not bad, "frozen", f"unknown part(s) {bad}; known: {', '.join(MODEL_PARTS)}")


# --------------------------------------------------------------------------- training


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
    vqa: float = 0.2  # plain yes/no question with a description, no mask

    def __post_init__(self) -> None:
        total = self.seg + self.seg_answer + self.vqa
        _check(
            min(self.seg, self.seg_answer, self.vqa) >= 0 and total > 0,
            "task_mix",
            "weights must be >= 0 and not all zero",
        )


def _check_placement(device: str, precision: str) -> None:
    _check(precision in ("auto", "fp32", "bf16"), "precision", "one of auto, fp32, bf16")
    _check(
        device in ("auto", "cpu") or device.startswith("cuda"),
        "device",
        "one of auto, cpu, cuda, cuda:N",
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
    paste_prob: float = 0.0  # share of mask-only samples given a pasted synthetic anomaly
    tokenizer_vocab: int = 600  # byte-level BPE vocabulary of the tiny preset's tokenizer
    num_threads: int = 0  # torch intra-op threads; 0 = torch default
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16
    gradient_checkpointing: bool = False  # the LLM's, for the real preset on a GPU
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "steps", "must be >= 1")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(len(self.betas) == 2, "betas", "must be two numbers")
        _check(0 <= self.warmup_steps, "warmup_steps", "must be >= 0")
        _check(0.0 <= self.paste_prob <= 1.0, "paste_prob", "must be in [0, 1]")
        _check_placement(self.device, self.precision)


@dataclass(frozen=True)
class EvalConfig:
    eval_size: int = 128  # evaluation resolution (square), recorded with the metrics
    max_new_tokens: int = 8  # greedy decoding budget for the answer holding [SEG]
    n_overlays: int = 3  # test images per class in the overlay figure
    batch_size: int = 16
    fpr_limit: float = 0.3
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16
    progress: bool = True

    def __post_init__(self) -> None:
        _check_placement(self.device, self.precision)
