"""The reference cue: the model reads normal references of the product through SAM's dense prompt
and its visual tokens; without references (k = 0) it is the model without the cue."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.models import SMALL_CFG, batch, tiny_tokenizer

from vmad_pipeline.configs import ConfigError
from vmad_pipeline.configs.model import ReferenceCueConfig, describe_model
from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from vmad_pipeline.models.reference_cue import ReferenceCue

CUE_CFG = dataclasses.replace(SMALL_CFG, references=ReferenceCueConfig(enabled=True))


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _model(tokenizer, cfg=CUE_CFG, seed=0):
    torch.manual_seed(seed)
    return build_vmad(cfg, tokenizer, train_classes=["screw", "carpet"])


def _wake(model):
    """The cue's last layers start at zero; give them weights so that the cue acts."""
    with torch.no_grad():
        for net in (model.cue.dense, model.cue.token, model.cue.skip):
            net[-1].weight.normal_(0, 0.5)


def test_a_reference_equal_to_the_image_gives_a_zero_map(tokenizer):
    model = _model(tokenizer).eval()
    b = batch(model, tokenizer)
    images = b["images_clip"]
    feats = model.reference_features(images)
    image = model.get_image_features(images)
    cue = model.reference_cue(images, image, [feats[0].flatten(1).T, feats[0].flatten(1).T])
    assert cue.has.all()
    assert float(cue.maps[0].abs().max()) < 1e-5  # the image itself: every patch found
    assert float(cue.maps[1].max()) > 0.05  # another image: not


def test_shuffling_references_does_not_change_the_result(tokenizer):
    model = _model(tokenizer).eval()
    _wake(model)
    b = batch(model, tokenizer)
    refs = torch.rand(3, 3, *b["images_clip"].shape[-2:])
    owner = torch.tensor([0, 0, 1])
    one = model(**b, reference_images=refs, reference_owner=owner)
    order = torch.tensor([2, 1, 0])
    two = model(**b, reference_images=refs[order], reference_owner=owner[order])
    torch.testing.assert_close(one.logits, two.logits)
    torch.testing.assert_close(one.mask_logits, two.mask_logits)


def test_no_references_is_the_model_without_the_cue(tokenizer):
    """k = 0 adds nothing, trained or not; at initialisation references already move the mask
    (the skip's prior: unlike the references = a defect), nothing else reads them yet."""
    plain = _model(tokenizer, SMALL_CFG).eval()
    model = _model(tokenizer).eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    b = batch(model, tokenizer)
    ref = plain(**b)
    out = model(**b)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.mask_logits, ref.mask_logits)
    refs = torch.rand(2, 3, *b["images_clip"].shape[-2:])
    got = model(**b, reference_images=refs, reference_owner=torch.tensor([0, 1]))
    assert (got.mask_logits - ref.mask_logits).abs().max() > 1e-3
    _wake(model)
    torch.testing.assert_close(model(**b).logits, ref.logits)  # trained: still nothing at k = 0


def test_references_change_the_mask_and_the_answer_once_trained(tokenizer):
    model = _model(tokenizer).eval()
    _wake(model)
    b = batch(model, tokenizer)
    none = model(**b)
    refs = torch.rand(2, 3, *b["images_clip"].shape[-2:])
    got = model(**b, reference_images=refs, reference_owner=torch.tensor([0, 1]))
    assert (got.logits - none.logits).abs().max() > 1e-4
    assert (got.mask_logits - none.mask_logits).abs().max() > 1e-4
    # a row without references is unchanged by the other's
    one = model(**b, reference_images=refs[:1], reference_owner=torch.tensor([0]))
    torch.testing.assert_close(one.logits[1], none.logits[1])
    assert (one.logits[0] - none.logits[0]).abs().max() > 1e-4


def test_the_cue_trains_and_is_saved(tokenizer, tmp_path):
    model = _model(tokenizer).train()
    _wake(model)
    b = batch(model, tokenizer)
    refs = torch.rand(2, 3, *b["images_clip"].shape[-2:])
    owner = torch.tensor([0, 1])
    out = model(**b, reference_images=refs, reference_owner=owner)
    (out.ce + out.bce + out.dice).backward()
    for net in (model.cue.dense, model.cue.token, model.cue.skip):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    model.eval()
    want = model(**b, reference_images=refs, reference_owner=owner)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    got = loaded(**b, reference_images=refs, reference_owner=owner)
    torch.testing.assert_close(got.logits, want.logits)
    torch.testing.assert_close(got.mask_logits, want.mask_logits)


def test_parts_switch_off_and_are_described(tokenizer):
    off = dataclasses.replace(CUE_CFG, references=ReferenceCueConfig(enabled=True, evidence=False))
    model = _model(tokenizer, off)
    assert model.cue.token is None and model.cue.dense is not None
    assert describe_model(off)["references"] == "mask_prompt"
    assert describe_model(CUE_CFG)["references"] == "mask_prompt,evidence"
    assert describe_model(SMALL_CFG)["references"] == "off"
    bad = dataclasses.replace(SMALL_CFG, references=ReferenceCueConfig(enabled=True, levels=(9,)))
    with pytest.raises(ConfigError, match="references.levels"):
        build_vmad(bad, tokenizer, train_classes=["screw"])


def test_distance_maps_refuse_a_count_mismatch():
    with pytest.raises(ValueError, match="2 images but 1"):
        ReferenceCue.distance_maps(torch.zeros(2, 4, 3, 3), [None])
