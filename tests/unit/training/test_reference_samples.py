"""Training samples with normal references: drawn from the other normal images of the sample's own
class and source, never the sample itself, augmented as the sample is; k from the configured set."""

from __future__ import annotations

import dataclasses

import torch
from helpers.models import SMALL_CFG
from helpers.training import corpus, train_config

from vmad_pipeline.configs.model import ReferenceCueConfig
from vmad_pipeline.training.data import SampleSpec, TrainingSamples, collate
from vmad_pipeline.training.samples import augment, sample_random

CUE_MODEL = dataclasses.replace(SMALL_CFG, references=ReferenceCueConfig(enabled=True))


def _samples(tmp_path, shots, **cfg):
    rows, roots, qa, tok = corpus(tmp_path, n=6)
    cfg = train_config(tmp_path, reference_shots=shots, **cfg)
    spec = SampleSpec(size=32, slots=_slots(), seg_first=True, classes=(), references=True)
    return rows, TrainingSamples(rows, roots, {}, cfg, spec, tok)


def _slots():
    from vmad_pipeline.prompts import ImageSlots

    return ImageSlots(visual=4, expert=0, region=0)


def test_references_are_other_normal_images_of_the_same_class(tmp_path):
    rows, samples = _samples(tmp_path, (2,), augment=False, shared_paste_prob=0.0)
    images = [samples.read(i)[0] for i in range(len(rows))]
    for index in range(len(rows)):
        refs = samples[(0, index)]["references"]
        assert len(refs) == 2
        for ref in refs:
            same = [j for j, img in enumerate(images) if torch.equal(img, ref)]
            assert same and all(j != index for j in same)
            j = same[0]
            assert rows.category[j] == rows.category[index] and rows.label[j] == 0


def test_references_are_augmented_as_their_sample_is(tmp_path):
    rows, samples = _samples(
        tmp_path, (1,), paste_prob=0.0, detect_paste_prob=0.0, shared_paste_prob=0.0
    )
    index = 0  # a normal image: its augmented form is its read form augmented by its draws
    got = samples[(3, index)]
    rng, gen = sample_random(samples.cfg.seed, 3, index)
    from vmad_pipeline.training.samples import plan_sample

    plan = plan_sample(rows.category[index], False, samples.cfg, rng)
    look = gen.get_state()
    ref = got["references"][0]
    candidates = [
        augment(
            samples.read(j)[0],
            samples.read(j)[1],
            torch.Generator().set_state(look),
            plan.geometric,
        )[0]
        for j in range(len(rows))
        if rows.category[j] == rows.category[index] and j != index
    ]
    assert any(torch.equal(ref, c) for c in candidates)


def test_k_is_drawn_from_the_set_and_zero_gives_none(tmp_path):
    _, samples = _samples(tmp_path, (0, 2))
    ks = [len(samples[(0, i)].get("references", ())) for i in range(len(samples))]
    ks += [len(samples[(1, i)].get("references", ())) for i in range(len(samples))]
    assert set(ks) == {0, 2}
    batch = collate([samples[(0, i)] for i in range(4)], pad_id=0)
    counts = [len(samples[(0, i)].get("references", ())) for i in range(4)]
    if sum(counts):
        assert len(batch["reference_images"]) == sum(counts)
        assert batch["reference_owner"].tolist() == [
            i for i, c in enumerate(counts) for _ in range(c)
        ]


def test_a_model_with_the_cue_trains_with_references(tmp_path):
    from helpers.training import fit

    data = corpus(tmp_path, n=6)
    cfg = train_config(tmp_path, steps=3, reference_shots=(0, 2))
    model = fit(data, cfg, CUE_MODEL).model
    # the cue's last layers start at zero: trained, they moved
    assert model.cue.dense[-1].weight.abs().sum() > 0
    assert model.cue.token[-1].weight.abs().sum() > 0


def test_a_shared_structure_is_in_the_image_and_every_reference_and_not_in_the_mask():
    from vmad_pipeline.training.samples import shared_structure

    gen = torch.Generator().manual_seed(3)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    mask = torch.zeros(32, 32, dtype=torch.uint8)
    mask[:, :4] = 1  # a defect: the shared structure never covers it
    refs = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    source = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    out, got = shared_structure(image, mask, refs, source, gen)
    changed = (out != 0).any(0)
    assert changed.any() and not changed[:, :4].any()
    for ref in got:
        assert torch.equal((ref != 0).any(0)[:, 4:], changed[:, 4:])
    assert not image.any() and not refs.any()  # the inputs are left alone


def test_shared_structures_go_only_to_samples_with_references(tmp_path):
    _, samples = _samples(
        tmp_path,
        (0, 2),
        shared_paste_prob=1.0,
        augment=False,
        paste_prob=0.0,
        detect_paste_prob=0.0,
    )
    for i in range(len(samples)):
        got = samples[(0, i)]
        plain = samples.read(i)[0]
        if "references" in got:
            assert not torch.equal(got["image"], plain) or not got["mask"].any()
        else:
            assert torch.equal(got["image"], plain)
