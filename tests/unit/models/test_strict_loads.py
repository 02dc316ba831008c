"""Strict loads (issue 11): a checkpoint or export with weights removed or added is refused,
naming them, instead of predicting from random weights; keys that are absent on purpose (the
frozen parts of a pretrained preset) are accepted by a named rule."""

from __future__ import annotations

import pytest
import torch
from helpers.models import CFG, tiny_tokenizer
from safetensors.torch import load_file, save_file

from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.checkpoint import (
    export_model,
    load_checkpoint,
    load_exported,
    save_checkpoint,
)
from vmad_pipeline.models.strict import WeightsMismatchError


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def edit_safetensors(path, *, drop: tuple[str, ...] = (), add: dict | None = None) -> int:
    state = load_file(path)
    kept = {k: v for k, v in state.items() if not k.startswith(drop)}
    save_file({**kept, **(add or {})}, path)
    return len(state) - len(kept)


def test_export_with_missing_tensors_is_refused_naming_them(tokenizer, tmp_path):
    model = build_vmad(CFG, tokenizer)
    export_model(model, tokenizer, tmp_path / "export")
    dropped = edit_safetensors(
        tmp_path / "export" / "weights.safetensors", drop=("seg_head", "sam_decoder")
    )
    assert dropped > 0
    with pytest.raises(WeightsMismatchError, match=rf"{dropped} missing: sam_decoder\."):
        load_exported(tmp_path / "export")


def test_checkpoint_with_an_unexpected_tensor_is_refused(tokenizer, tmp_path):
    save_checkpoint(build_vmad(CFG, tokenizer), tokenizer, tmp_path / "ckpt")
    edit_safetensors(tmp_path / "ckpt" / "weights.safetensors", add={"extra.w": torch.zeros(1)})
    with pytest.raises(WeightsMismatchError, match=r"1 unexpected: extra\.w"):
        load_checkpoint(tmp_path / "ckpt")


def test_checkpoint_with_a_missing_tensor_is_refused(tokenizer, tmp_path):
    save_checkpoint(build_vmad(CFG, tokenizer), tokenizer, tmp_path / "ckpt")
    edit_safetensors(tmp_path / "ckpt" / "weights.safetensors", drop=("projector.",))
    with pytest.raises(WeightsMismatchError, match=r"missing: projector\."):
        load_checkpoint(tmp_path / "ckpt")


def test_adapter_without_its_lora_weights_is_refused(tokenizer, tmp_path):
    save_checkpoint(build_vmad(CFG, tokenizer), tokenizer, tmp_path / "ckpt")
    edit_safetensors(
        tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors",
        drop=("base_model.model.model.layers.0",),
    )
    with pytest.raises(WeightsMismatchError, match=r"adapter_model\.safetensors.*missing: .*lora"):
        load_checkpoint(tmp_path / "ckpt")


def test_base_llm_with_a_missing_layer_is_refused(tokenizer, tmp_path):
    save_checkpoint(build_vmad(CFG, tokenizer), tokenizer, tmp_path / "ckpt")
    base = next((tmp_path / "ckpt" / "llm_base").glob("*.safetensors"))
    edit_safetensors(base, drop=("model.layers.1.mlp",))
    with pytest.raises(WeightsMismatchError, match=r"llm_base.*missing: model\.layers\.1\.mlp"):
        load_checkpoint(tmp_path / "ckpt")


def test_exported_llm_with_a_missing_tensor_is_refused(tokenizer, tmp_path):
    export_model(build_vmad(CFG, tokenizer), tokenizer, tmp_path / "export")
    llm = next((tmp_path / "export" / "llm").glob("*.safetensors"))
    edit_safetensors(llm, drop=("model.norm",))
    with pytest.raises(WeightsMismatchError, match=r"missing: model\.norm"):
        load_exported(tmp_path / "export")


def test_real_preset_frozen_parts_absent_by_rule_but_trained_ones_required(tmp_path):
    """The real preset saves no frozen CLIP / SAM encoder weights (they reload from the base
    files, a named rule); a trained part missing from its checkpoint is still refused."""
    from helpers.checkpoints import TINY_SAM, make_tiny_llava_dir, make_tiny_sam_checkpoint

    from vmad_pipeline.configs import DsslConfig, ModelConfig, WeightsConfig
    from vmad_pipeline.models.pretrained import load_llava_tokenizer

    weights = WeightsConfig(
        llava_dir=str(make_tiny_llava_dir(tmp_path / "llava")),
        sam_checkpoint=str(make_tiny_sam_checkpoint(tmp_path / "sam.pth")),
    )
    cfg = ModelConfig(
        preset="llava7b_sam_h",
        sam=TINY_SAM,
        dssl=DsslConfig(boxes=4, queue_size=4, proj_dim=8, meta_hidden=8),
        frozen=("vision", "sam_encoder"),
        weights=weights,
    )
    tokenizer = load_llava_tokenizer(weights.llava_dir)
    save_checkpoint(build_vmad(cfg, tokenizer, train_classes=["a"]), tokenizer, tmp_path / "ckpt")
    load_checkpoint(tmp_path / "ckpt", weights=weights)  # frozen parts absent: fine
    edit_safetensors(tmp_path / "ckpt" / "weights.safetensors", drop=("seg_head.",))
    with pytest.raises(WeightsMismatchError, match=r"missing: seg_head.*vision, sam_encoder"):
        load_checkpoint(tmp_path / "ckpt", weights=weights)
