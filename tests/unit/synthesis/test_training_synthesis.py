"""``train.synthesis``: generated anomalies in training samples, seeded per sample, in DataLoader
workers and through fit_vmad; bad parameters named."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.training import MODEL, corpus, train_config
from torch.utils.data import DataLoader

from vmad_pipeline.configs import ConfigError, TaskMix, TrainConfig
from vmad_pipeline.configs.generate import GeneratorConfig, parse_generate_params
from vmad_pipeline.synthesis.generator import DefectGenerator
from vmad_pipeline.synthesis.render import Painter
from vmad_pipeline.training.data import TrainingSamples
from vmad_pipeline.training.samples import blob_mask, paint_anomaly, synthesis_kind

GEN_CFG = GeneratorConfig(
    width=4, depth=2, embed_dim=8, image_size=32, crop=16, steps=2, batch_size=2, progress=False
)


class CountingPainter(Painter):
    """A painter that counts its calls (kept by the dataset in this process)."""

    calls = 0

    def __call__(self, *args, **kwargs):
        CountingPainter.calls += 1
        return super().__call__(*args, **kwargs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus(tmp_path_factory.mktemp("synthesis_corpus"), n=4)


@pytest.fixture(scope="module")
def spec(data):
    from vmad_pipeline.models.build import build_vmad
    from vmad_pipeline.training.fit import _spec

    return _spec(build_vmad(MODEL, data[3], seed=0, train_classes=["bolt", "part"]))


def _painter(cls=Painter):
    torch.manual_seed(0)
    return cls(DefectGenerator(types=2, width=4, depth=2, embed_dim=8), ("crack", "hole"))


def _samples(data, spec, synthesis, painter, seed=0):
    rows, roots, _, tok = data
    cfg = TrainConfig(seed=seed, synthesis=synthesis, paste_prob=1.0, task_mix=TaskMix(1, 0, 0, 0))
    return TrainingSamples(rows, roots, {}, cfg, spec, tok, painter=painter)


def test_generated_samples_are_fixed_by_the_seed(data, spec):
    a = _samples(data, spec, "generated", _painter())
    b = _samples(data, spec, "generated", _painter())
    other = _samples(data, spec, "generated", _painter(), seed=1)
    for i in range(len(a)):
        assert torch.equal(a[(0, i)]["image"], b[(0, i)]["image"])
        assert torch.equal(a[(0, i)]["mask"], b[(0, i)]["mask"])
    assert any(not torch.equal(a[(0, i)]["mask"], other[(0, i)]["mask"]) for i in range(len(a)))


def test_paint_anomaly_paints_a_blob_and_adds_it_to_the_mask():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    mask = torch.zeros((32, 32), dtype=torch.uint8)
    mask[0:3, 0:3] = 1  # a real defect already there stays
    out, new = paint_anomaly(image, mask, _painter(), torch.Generator().manual_seed(5))
    blob = blob_mask(32, torch.Generator().manual_seed(5))  # the same first draws
    assert torch.equal(new.bool(), blob | mask.bool())
    assert torch.equal(out[:, ~blob], image[:, ~blob])
    assert not torch.equal(out[:, blob], image[:, blob])


def test_both_draws_both_kinds_from_the_sample_stream(data, spec):
    kinds = {synthesis_kind("both", torch.Generator().manual_seed(s)) for s in range(20)}
    assert kinds == {"paste", "generated"}
    assert synthesis_kind("paste", torch.Generator()) == "paste"
    CountingPainter.calls = 0
    samples = _samples(data, spec, "both", _painter(CountingPainter))
    n = 0
    for epoch in range(3):
        for i in range(len(samples)):
            samples[(epoch, i)]
            n += 1
    assert 0 < CountingPainter.calls < n


def test_generated_samples_in_a_dataloader_worker_match_the_main_process(data, spec):
    samples = _samples(data, spec, "generated", _painter())
    keys = [(0, 0), (0, 3), (1, 5)]
    here = [samples[k]["image"] for k in keys]
    loader = DataLoader(samples, batch_size=None, sampler=keys, num_workers=1)
    there = [s["image"] for s in loader]
    assert all(torch.equal(a, b) for a, b in zip(here, there, strict=True))


def test_generated_without_a_generator_is_refused(data, spec):
    with pytest.raises(ValueError, match="train.synthesis=generated needs the defect generator"):
        _samples(data, spec, "generated", None)


def test_bad_parameters_are_named():
    with pytest.raises(ConfigError, match="synthesis: 'cutpaste' is not one of paste, generated"):
        TrainConfig(synthesis="cutpaste")
    with pytest.raises(ConfigError, match="generate.masks: one of real, blob"):
        parse_generate_params({"masks": "drawn"})
    with pytest.raises(ConfigError, match="generate.generator.crop"):
        parse_generate_params({"generator": {"crop": 12}})
    with pytest.raises(ConfigError, match="generate.generator.image_size"):
        parse_generate_params({"generator": {"image_size": 100}})
    with pytest.raises(ConfigError, match="generate.classes: one of train, test"):
        parse_generate_params({"classes": "all"})
    with pytest.raises(ConfigError, match="generate.generator.stepz"):
        parse_generate_params({"generator": {"stepz": 3}})


def test_fit_vmad_trains_with_generated_anomalies(data, tmp_path):
    rows, roots, qa, tok = data
    cfg = train_config(tmp_path, steps=2, synthesis="generated", paste_prob=1.0)
    gen_cfg = dataclasses.replace(GEN_CFG, cache_dir=str(tmp_path / "generator"))
    from vmad_pipeline.synthesis.fit import generator_stage
    from vmad_pipeline.synthesis.run import painter_from_stage
    from vmad_pipeline.training.fit import fit_vmad, make_job

    stage = generator_stage(rows, roots, gen_cfg)
    assert stage["types"] == ["scratch"] and stage["reused"] is False
    assert len(list((tmp_path / "generator").glob("*.pt"))) == 1
    assert generator_stage(rows, roots, gen_cfg)["reused"] is True  # cached by its inputs
    CountingPainter.calls = 0
    painter = CountingPainter(painter_from_stage(stage).model, stage["types"])
    trained = fit_vmad(make_job(rows, roots, qa, tok, cfg, MODEL), painter=painter)
    assert trained.summary["steps_this_run"] == 2 and CountingPainter.calls > 0
    with pytest.raises(ValueError, match="needs the defect generator's painter"):
        fit_vmad(make_job(rows, roots, qa, tok, cfg, MODEL))
    with pytest.raises(FileNotFoundError, match="--to-nodes train_expert,train_generator"):
        other = dataclasses.replace(gen_cfg, seed=1)
        generator_stage(rows, roots, other, cached_only=True)


def test_a_training_resumes_only_with_the_same_generator(data, tmp_path):
    from vmad_pipeline.synthesis.run import painter_from_stage
    from vmad_pipeline.training.fit import fit_vmad, make_job

    rows, roots, qa, tok = data
    cfg = train_config(tmp_path, steps=2, synthesis="generated", paste_prob=1.0)
    torch.manual_seed(0)
    model = DefectGenerator(types=1, width=4, depth=2, embed_dim=8)
    stage = {"state": model.state_dict(), "types": ["scratch"], "key": "a" * 16}
    stage["config"] = dataclasses.asdict(dataclasses.replace(GEN_CFG, width=4, depth=2))
    painter = painter_from_stage(stage)
    assert painter.key == "a" * 16
    fit_vmad(make_job(rows, roots, qa, tok, cfg, MODEL), painter=painter)
    again = fit_vmad(make_job(rows, roots, qa, tok, cfg, MODEL), painter=painter_from_stage(stage))
    assert again.summary["steps_this_run"] == 0  # the same generator: resumed at its end
    other = painter_from_stage({**stage, "key": "b" * 16})
    fresh = fit_vmad(make_job(rows, roots, qa, tok, cfg, MODEL), painter=other)
    assert fresh.summary["steps_this_run"] == 2  # another generator: trained anew
