"""The defect generator: the outside of the mask is never touched, the defect type reaches the
painting, and training lowers the loss."""

from __future__ import annotations

import pytest
import torch
from helpers.training import corpus

from vmad_pipeline.configs.generate import GeneratorConfig
from vmad_pipeline.synthesis.fit import crop_batch, generator_loss, load_defects, train_generator
from vmad_pipeline.synthesis.generator import DefectGenerator
from vmad_pipeline.synthesis.render import Painter

TINY = GeneratorConfig(
    width=4,
    depth=2,
    embed_dim=8,
    image_size=32,
    crop=16,
    steps=20,
    batch_size=4,
    lr=5e-3,
    progress=False,
)


def _inputs(seed: int = 0, size: int = 16):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand((2, 3, size, size), generator=gen)
    mask = torch.zeros((2, 1, size, size))
    mask[:, :, 4:10, 5:12] = 1
    noise = torch.randn((2, 1, size, size), generator=gen)
    return image, mask, noise


def test_outside_the_mask_is_exactly_the_input():
    torch.manual_seed(0)
    model = DefectGenerator(types=3, width=4, depth=2, embed_dim=8)
    image, mask, noise = _inputs()
    out = model(image, mask, torch.tensor([0, 2]), noise)
    outside = (mask == 0).expand_as(image)
    assert torch.equal(out[outside], image[outside])
    assert not torch.equal(out[~outside], image[~outside])  # the inside is painted


def test_painter_keeps_uint8_pixels_outside_bit_for_bit():
    torch.manual_seed(0)
    painter = Painter(DefectGenerator(types=2, width=4, depth=2, embed_dim=8), ("crack", "hole"))
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    mask = torch.zeros((16, 16), dtype=torch.uint8)
    mask[3:9, 2:7] = 1
    out = painter(image, mask, 1, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8
    assert torch.equal(out[:, mask == 0], image[:, mask == 0])
    assert not torch.equal(out[:, mask == 1], image[:, mask == 1])


def test_defect_type_changes_the_inside():
    torch.manual_seed(0)
    model = DefectGenerator(types=2, width=4, depth=2, embed_dim=8)
    image, mask, noise = _inputs()
    a = model(image, mask, torch.tensor([0, 0]), noise)
    b = model(image, mask, torch.tensor([1, 1]), noise)
    inside = (mask > 0).expand_as(image)
    assert (a[inside] - b[inside]).abs().mean() > 1e-3


def test_painter_refuses_type_names_that_do_not_fit():
    with pytest.raises(ValueError, match="3 type names for a 2-type generator"):
        Painter(DefectGenerator(types=2, width=4, depth=2), ("a", "b", "c"))


def test_loss_is_l1_inside_and_ignores_a_constant_offset_in_gradients():
    target = torch.rand((1, 3, 8, 8))
    mask = torch.zeros((1, 1, 8, 8))
    mask[..., 2:5, 2:6] = 1
    assert float(generator_loss(target, target, mask, 1.0)) == 0.0
    # an offset of 0.1 everywhere: L1 0.1 inside, image gradients unchanged
    assert float(generator_loss(target + 0.1, target, mask, 1.0)) == pytest.approx(0.1, abs=1e-6)
    # outside the mask nothing counts
    far = target.clone()
    far[..., 7, 7] += 0.5
    assert float(generator_loss(far, target, mask, 0.0)) == 0.0


def test_a_few_training_steps_lower_the_loss(tmp_path):
    rows, roots, _, _ = corpus(tmp_path, n=6)
    defects = load_defects(rows, roots, 32)
    assert defects.types == ("scratch",) and len(defects.type_idx) == 6

    def fixed_batch_loss(model) -> float:
        gen = torch.Generator().manual_seed(123)
        images, masks, types = crop_batch(defects, torch.arange(6), 16, gen)
        with torch.no_grad():
            out = model(images, masks, types, torch.zeros_like(masks))
        return float(generator_loss(out, images, masks, 1.0))

    torch.manual_seed(TINY.seed)
    from vmad_pipeline.synthesis.fit import build_generator

    before = fixed_batch_loss(build_generator(TINY, 1).eval())
    model, losses = train_generator(defects, TINY)
    assert len(losses) == TINY.steps
    assert fixed_batch_loss(model) < 0.85 * before  # untrained: equal (same initial weights)


def test_training_is_deterministic_per_seed(tmp_path):
    rows, roots, _, _ = corpus(tmp_path, n=4)
    defects = load_defects(rows, roots, 32)
    cfg = GeneratorConfig(**{**TINY.__dict__, "steps": 3})
    _, a = train_generator(defects, cfg)
    _, b = train_generator(defects, cfg)
    assert a == b
