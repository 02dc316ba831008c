"""AMoE-LoRA's settings as a peft config (``AmoeLoraConfig``), its peft type and weight prefix,
and the experts' order (docs/amoe_lora.md)."""

from __future__ import annotations

from dataclasses import dataclass

from peft.config import PeftConfig

from vmad_pipeline.models.adapter_names import AMOE_LORA  # noqa: F401 (this package's names)
from vmad_pipeline.models.adapter_names import AMOE_PREFIX as PREFIX  # noqa: F401


@dataclass
class AmoeLoraConfig(PeftConfig):
    """AMoE-LoRA's settings; peft's own fields (target_modules, modules_to_save...) work as in LoRA."""

    r: int = 8  # rank of every expert
    lora_alpha: float = 16.0  # expert scaling: lora_alpha / r
    lora_dropout: float = 0.0  # dropout on the experts' input
    n_generalist: int = 2  # generalist experts per layer (expert indices 0 .. n_generalist - 1)
    n_anomaly: int = 2  # anomaly-aware experts per layer (the indices after the generalists)
    routing: str = "soft"  # "soft" (every expert, softmax gates) or "topk"
    top_k: int = 1  # experts per token with routing="topk"
    topk_renormalize: bool = False  # top-k gates sum to 1 (Mixtral); False: probabilities (Switch)
    evidence_scale_init: float = 1.0  # initial softplus(s), the weight of logit(evidence); > 0
    router_init_std: float = 0.02  # router weights ~ N(0, std)
    init_weights: bool = True  # B = 0 as in LoRA (the adapter starts as a no-op); False: random B
    target_modules: list[str] | str | None = None  # as in LoRA (None: peft's LoRA defaults)
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    modules_to_save: list[str] | None = None  # fully trained and saved, as in LoRA

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = AMOE_LORA
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.r <= 0 or self.n_generalist < 0 or self.n_anomaly < 0 or self.n_experts < 1:
            raise ValueError("AMoE-LoRA needs r > 0 and at least one expert")
        if self.routing not in ("soft", "topk"):
            raise ValueError(f"routing must be 'soft' or 'topk', not {self.routing!r}")
        if self.routing == "topk" and not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k must be in [1, {self.n_experts}], not {self.top_k}")
        if self.evidence_scale_init <= 0:
            raise ValueError("evidence_scale_init must be > 0 (it is a softplus output)")

    @property
    def n_experts(self) -> int:
        return self.n_generalist + self.n_anomaly


def expert_names(config: AmoeLoraConfig) -> list[str]:
    """The experts in the order of every per-expert tensor: generalists first."""
    return [f"generalist_{i}" for i in range(config.n_generalist)] + [
        f"anomaly_{i}" for i in range(config.n_anomaly)
    ]
