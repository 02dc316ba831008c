"""One home for configuration: a frozen, validated dataclass per parameters block.

``base`` holds :class:`ConfigError`, :func:`check` and :func:`from_dict`; one module per concern
mirrors one ``conf/base/parameters_<name>.yml`` (``model`` is ``train.model``). Each block is
parsed into its dataclass in one place (``parse_<name>_params``), and every block a run uses is
parsed before its first node (``hooks.ParamsCheckHook``).
"""

from vmad_pipeline.configs.base import ConfigError, check, from_dict, to_dict
from vmad_pipeline.configs.model import (
    MODEL_PARTS,
    PRESETS,
    PROJECTORS,
    AmoeConfig,
    DsslConfig,
    ExpertConfig,
    LLMConfig,
    LoraConfig,
    LtcConfig,
    ModelConfig,
    ProjectorConfig,
    RegionConfig,
    SamConfig,
    VisionConfig,
    WeightsConfig,
    describe_model,
)
from vmad_pipeline.configs.train import LossWeights, TaskMix, TrainConfig, parse_train_params

__all__ = [
    "MODEL_PARTS",
    "PRESETS",
    "PROJECTORS",
    "ConfigError",
    "DsslConfig",
    "ExpertConfig",
    "LLMConfig",
    "AmoeConfig",
    "LoraConfig",
    "LossWeights",
    "LtcConfig",
    "ModelConfig",
    "ProjectorConfig",
    "RegionConfig",
    "SamConfig",
    "TaskMix",
    "TrainConfig",
    "VisionConfig",
    "WeightsConfig",
    "check",
    "describe_model",
    "from_dict",
    "parse_train_params",
    "to_dict",
]
