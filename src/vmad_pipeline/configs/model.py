"""The model's configuration (``train.model``): every component's sizes and switches.

``ModelConfig`` is saved with every checkpoint and rebuilt from it; :func:`describe_model` is the
one summary of a model (preset, projector, LTC parts, DSSL) that MLflow tags and ablation tables
both use.

Over 400 lines (450): one frozen dataclass per component of one model, each with its checks,
read together by ``from_dict`` from one ``train.model`` block and saved as one config.json;
splitting them across files would separate a component's fields from the model they nest in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmad_pipeline.configs.base import check

# tiny: random init, trained here; small: ImageNet EfficientNet-Lite0 (installed, frozen) for
# both image branches, the tiny LLM trained here; llava7b_sam_h: local LLaVA-1.5 + SAM ViT-H.
PRESETS = ("tiny", "small", "llava7b_sam_h")
PROJECTORS = ("mlp", "avgpool", "resampler", "ldpv2", "ltc")
MODEL_PARTS = (
    "vision",
    "projector",
    "llm",
    "sam_encoder",
    "sam_decoder",
    "seg_head",
    "dssl",
    "expert",
    "region",
    "references",
)
EXPERTS = ("none", "anomaly_ov")
REGION_SOURCES = ("own_mask", "expert")
ADAPTERS = ("lora", "amoe_lora")
# What AMoE-LoRA's anomaly experts read (docs/amoe_lora.md): auto = the anomaly expert's image
# score when the model has one, else its own mask's peak drawn in a no-gradient pre-pass.
EVIDENCE_SOURCES = ("auto", "expert", "own_mask", "none")
ROUTINGS = ("soft", "topk")


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
        check(
            self.image_size % self.patch_size == 0, "image_size", "must be a multiple of patch_size"
        )
        check(
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
        check(
            min(self.blocks, self.heads, self.points, self.conv_blocks) >= 1,
            "blocks",
            "blocks, heads, points and conv_blocks must be >= 1",
        )
        check(not self.multi_level or len(self.levels) >= 1, "levels", "needs at least one layer")


@dataclass(frozen=True)
class ProjectorConfig:
    name: str = "avgpool"  # one of PROJECTORS
    pool: int = 2  # avgpool / resampler / ldpv2 / ltc: (grid / pool)^2 tokens (576 -> 144 at 2)
    depth: int = 1  # resampler: cross-attention layers
    heads: int = 4  # resampler: attention heads (must divide the vision width)
    # A learned embedding per visual token added to the projector's output: the LLM knows
    # where on the image each token lies (needed to say where a defect is).
    positions: bool = False
    ltc: LtcConfig = field(default_factory=LtcConfig)

    def __post_init__(self) -> None:
        check(
            self.name in PROJECTORS,
            "name",
            f"unknown projector {self.name!r}; known: {', '.join(PROJECTORS)}",
        )
        check(self.pool >= 1, "pool", "must be >= 1")
        check(self.depth >= 1, "depth", "must be >= 1")
        check(self.heads >= 1, "heads", "must be >= 1")


@dataclass(frozen=True)
class LLMConfig:
    hidden_size: int = 128  # d_llm (4096 in LLaMA-7B)
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    max_positions: int = 512

    def __post_init__(self) -> None:
        check(
            self.hidden_size % self.num_heads == 0, "hidden_size", "must be divisible by num_heads"
        )


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        check(self.r >= 1, "r", "must be >= 1")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class AmoeConfig:
    """MAU-GPT's AMoE-LoRA (``models/amoe_lora/``, docs/amoe_lora.md), used with ``adapter:
    amoe_lora``; dropout and target modules are ``lora``'s. Its balancing loss's weight is
    ``train.loss.balance``."""

    r: int = 2  # every expert's rank (4 experts of rank 2: LoRA r=8's budget, plus the routers)
    alpha: float = 4.0  # scaling alpha / r, LoRA's 16 / 8 by default
    n_generalist: int = 2
    n_anomaly: int = 2
    routing: str = "soft"  # one of ROUTINGS
    top_k: int = 2  # experts per token with routing topk
    evidence: str = "auto"  # one of EVIDENCE_SOURCES

    def __post_init__(self) -> None:
        check(self.r >= 1, "r", "must be >= 1")
        check(self.alpha > 0, "alpha", "must be > 0")
        check(
            self.n_generalist >= 0 and self.n_anomaly >= 0 and self.n_experts >= 1,
            "n_generalist",
            "n_generalist and n_anomaly must be >= 0, at least one expert in all",
        )
        check(
            self.routing in ROUTINGS,
            "routing",
            f"unknown routing {self.routing!r}; known: {', '.join(ROUTINGS)}",
        )
        check(
            self.routing != "topk" or 1 <= self.top_k <= self.n_experts,
            "top_k",
            f"must be in [1, {self.n_experts}] (the experts per layer)",
        )
        check(
            self.evidence in EVIDENCE_SOURCES,
            "evidence",
            f"unknown evidence {self.evidence!r}; known: {', '.join(EVIDENCE_SOURCES)}",
        )

    @property
    def n_experts(self) -> int:
        return self.n_generalist + self.n_anomaly


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
        check(
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
        check(self.boxes >= 1, "boxes", "must be >= 1")
        check(0 < self.box_min <= self.box_max <= 1, "box_min", "need 0 < box_min <= box_max <= 1")
        check(0 <= self.abnormal_fraction < 1, "abnormal_fraction", "must be in [0, 1)")
        check(self.queue_size >= 1, "queue_size", "must be >= 1")
        check(self.tau > 0, "tau", "must be > 0")
        check(
            min(self.proj_dim, self.n_ctx, self.meta_hidden, self.roi_size) >= 1,
            "proj_dim",
            "proj_dim, n_ctx, meta_hidden and roi_size must be >= 1",
        )


@dataclass(frozen=True)
class ExpertConfig:
    """Anomaly-OV's anomaly expert (``models/anomaly_expert.py``, docs/experts.md): trained alone
    first (stage 1, ``steps`` > 0), then frozen while the rest is instruction-tuned."""

    name: str = "none"  # one of EXPERTS
    levels: tuple[int, ...] = ()  # the vision tower's frozen levels it reads (): the last 4
    width: int = 64  # the expert's own width
    pool: int = 2  # the selector's average pooling: (grid / pool)^2 suspicious tokens
    heads: int = 2  # the Q-Former's
    temperature: float = 0.07
    top_fraction: float = 0.1  # the image score: mean of this share of the highest map values
    adverbs: tuple[float, float] = (0.7, 0.4)  # score thresholds of "highly", "moderately"
    # stage 1 ("professional training" on the training classes' masks and labels)
    steps: int = 300
    lr: float = 1.0e-3
    batch_size: int = 8
    image_weight: float = 1.0  # of the image-score BCE beside the token BCE

    def __post_init__(self) -> None:
        check(
            self.name in EXPERTS,
            "name",
            f"unknown expert {self.name!r}; known: {', '.join(EXPERTS)}",
        )
        check(min(self.width, self.pool, self.heads) >= 1, "width", "width, pool, heads >= 1")
        check(self.width % self.heads == 0, "heads", "must divide width")
        check(0 < self.top_fraction <= 1, "top_fraction", "must be in (0, 1]")
        check(
            len(self.adverbs) == 2 and self.adverbs[0] >= self.adverbs[1],
            "adverbs",
            f"two thresholds (highly, moderately) with highly >= moderately, got {self.adverbs}",
        )
        check(self.steps >= 0 and self.batch_size >= 1, "steps", "steps >= 0, batch_size >= 1")

    @property
    def enabled(self) -> bool:
        return self.name != "none"


@dataclass(frozen=True)
class RegionConfig:
    """IAD-Unify's region tokens (``models/region_tokens.py``, docs/experts.md)."""

    enabled: bool = False
    grid: int = 2  # grid x grid region tokens
    source: str = "own_mask"  # the predicted region: one of REGION_SOURCES
    oracle_prob: float = 0.5  # training: the share of samples given the true region
    threshold: float = 0.5  # a predicted map's region: its pixels at or above this

    def __post_init__(self) -> None:
        check(self.grid >= 1, "grid", "must be >= 1")
        check(
            self.source in REGION_SOURCES,
            "source",
            f"unknown source {self.source!r}; known: {', '.join(REGION_SOURCES)}",
        )
        check(0 <= self.oracle_prob <= 1, "oracle_prob", "must be in [0, 1]")
        check(0 < self.threshold < 1, "threshold", "must be in (0, 1)")


@dataclass(frozen=True)
class ReferenceCueConfig:
    """The model reads k normal references of the product (``models/reference_cue.py``,
    docs/references.md): each patch's distance to the nearest reference patch on the vision
    tower's frozen features, given to SAM's decoder as its dense mask prompt (``mask_prompt``)
    and to the LLM added to the visual tokens (``evidence``). Off: the model takes none."""

    enabled: bool = False
    levels: tuple[int, ...] = (0, 1)  # the tower's frozen native levels (small: strides 4, 8, ...)
    stride: int = 4  # the patch grid: image side / stride
    mask_prompt: bool = True
    evidence: bool = True
    hidden: int = 32  # the cue's width
    max_patches: int = 4096  # coreset cap of one product's memory (a profile, batch mode)
    # at inference each reference is also read flipped (left-right, up-down, both:
    # models.references.FLIPS); off for a product whose mirror image is itself a defect.
    # Training reads its references as they come (augmented as the sample is).
    flips: bool = True

    def __post_init__(self) -> None:
        check(len(self.levels) >= 1, "levels", "needs at least one level")
        check(self.stride >= 1 and self.hidden >= 1, "stride", "stride and hidden must be >= 1")
        check(self.max_patches >= 16, "max_patches", "must be >= 16")


@dataclass(frozen=True)
class SelfComparisonConfig:
    """Zero-shot, each patch against the rest of its own image (``models/self_comparison.py``):
    where an image has no references, the map is multiplied by min(1, distance / ``scale``).
    Inference only (nothing is trained); off in a model saved before it existed."""

    enabled: bool = False
    levels: tuple[int, ...] = (1, 2)  # the vision tower's frozen native levels
    stride: int = 8  # the patch grid: the tower's input side / stride
    radius: int = 2  # a patch's own surroundings, left out: patches within this many of it
    flips: bool = True  # the image's mirror images compared with too
    scale: float = 0.55  # the distance kept whole (a typical defect's; docs/references.md)
    # the image score's factor where no place of the image reaches ``scale`` (1: none; off in a
    # model saved before it existed)
    repeated_score: float = 1.0

    def __post_init__(self) -> None:
        check(len(self.levels) >= 1, "levels", "needs at least one level")
        check(self.stride >= 1 and self.radius >= 0, "stride", "stride >= 1 and radius >= 0")
        check(self.scale > 0, "scale", "must be > 0")
        check(0 <= self.repeated_score <= 1, "repeated_score", "must be in [0, 1]")


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
    adapter: str = "lora"  # one of ADAPTERS: plain LoRA, or MAU-GPT's AMoE-LoRA (``amoe``)
    amoe: AmoeConfig = field(default_factory=AmoeConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    dssl: DsslConfig = field(default_factory=DsslConfig)
    frozen: tuple[
        str, ...
    ] = ()  # parts of MODEL_PARTS kept frozen (real preset: vision, sam_encoder)
    vocab_size: int = 0  # set from the tokenizer at build time
    # The detection answer's [SEG] before its text (the text can read the state that draws the
    # mask) or after it; inference writes and scores answers the same way.
    seg_first: bool = True
    # Mask evidence: the tokens after [SEG] read what the drawn mask shows (where, how large, the
    # visual tokens under it); models/evidence.py.
    seg_evidence: bool = False
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    region_tokens: RegionConfig = field(default_factory=RegionConfig)
    references: ReferenceCueConfig = field(default_factory=ReferenceCueConfig)
    self_comparison: SelfComparisonConfig = field(default_factory=SelfComparisonConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)  # set at build time (real preset)

    def __post_init__(self) -> None:
        check(
            self.preset in PRESETS,
            "preset",
            f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}",
        )
        bad = [p for p in self.frozen if p not in MODEL_PARTS]
        check(not bad, "frozen", f"unknown part(s) {bad}; known: {', '.join(MODEL_PARTS)}")
        check(
            not (self.region_tokens.source == "expert" and self.region_tokens.enabled)
            or self.expert.enabled,
            "region_tokens",
            "source 'expert' needs train.model.expert.name: anomaly_ov",
        )
        own = self.self_comparison
        check(
            not own.enabled or self.vision.image_size // own.stride >= 2 * own.radius + 2,
            "self_comparison",
            f"a {self.vision.image_size} px image at stride {own.stride} leaves a patch nothing "
            f"outside its radius {own.radius}: lower the radius or the stride",
        )
        check(
            self.adapter in ADAPTERS,
            "adapter",
            f"unknown adapter {self.adapter!r}; known: {', '.join(ADAPTERS)}",
        )
        check(
            self.amoe.evidence != "expert" or self.expert.enabled,
            "amoe",
            "evidence 'expert' needs train.model.expert.name: anomaly_ov (or evidence: auto)",
        )

    @property
    def routing_evidence(self) -> str:
        """What AMoE-LoRA's anomaly experts read: "expert", "own_mask" or "none" ("auto"
        resolved: the expert's score when there is an expert, else the own mask's peak)."""
        source = self.amoe.evidence
        if source == "auto":
            return "expert" if self.expert.enabled else "own_mask"
        return source


LTC_STEPS = ("local_context", "spatial_downsampler", "injection", "multi_level")


def describe_model(model: ModelConfig) -> dict[str, str | bool]:
    """What a model is, in the words runs are compared by: ``preset``, ``projector``, ``ltc``
    (True only for the full LTC: projector ``ltc`` with all four steps on), ``ltc_steps`` (the
    steps on, comma-separated; "" for another projector) and ``dssl``. The MLflow tags and the
    ablation tables both read it."""
    is_ltc = model.projector.name == "ltc"
    steps = [s for s in LTC_STEPS if getattr(model.projector.ltc, s)] if is_ltc else []
    return {
        "preset": model.preset,
        "projector": model.projector.name,
        "ltc": is_ltc and len(steps) == len(LTC_STEPS),
        "ltc_steps": ",".join(steps),
        "dssl": model.dssl.enabled,
        "expert": model.expert.name,
        "region_tokens": model.region_tokens.source if model.region_tokens.enabled else "off",
        "adapter": model.adapter,
        "references": reference_parts(model.references),
    }


def reference_parts(cfg: ReferenceCueConfig) -> str:
    """What the model does with references: "off", or its parts ("mask_prompt,evidence")."""
    parts = [p for p in ("mask_prompt", "evidence") if getattr(cfg, p)]
    return ",".join(parts) if cfg.enabled and parts else "off"
