"""Checkpoints and exact resume: a killed run resumes bitwise; SIGTERM leaves a checkpoint at the
step it stopped; foreign and damaged checkpoints are never resumed; the data are the same with
0 and 2 loader workers; an unreadable image stops training with its name, or is skipped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.training import MODEL, corpus, fit, trainable
from helpers.training import train_config as config

from vmad_pipeline.configs.train import DataConfig, ValidationConfig


def steps_written(tmp_path) -> list[int]:
    return sorted(int(p.name[5:]) for p in (tmp_path / "ckpt").glob("*/step-*"))


def test_checkpoints_every_n_steps_keep_the_last_and_resume_a_finished_run(tmp_path, caplog):
    data = corpus(tmp_path)
    first = fit(data, config(tmp_path))
    assert steps_written(tmp_path) == [4, 6]  # every 2 steps, the last 2 kept
    caplog.set_level("INFO")
    again = fit(data, config(tmp_path))
    assert "resumed from the checkpoint of step 6" in caplog.text
    assert again.summary["steps_this_run"] == 0
    for k, v in trainable(first.model).items():
        assert torch.equal(v, trainable(again.model)[k])
    assert again.curves["loss"] == first.curves["loss"]


KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = [{tests!r}]
    import dataclasses
    from helpers.training import MODEL, corpus, fit, train_config as config
    from pathlib import Path
    from vmad_pipeline.configs.model import LoraConfig
    import vmad_pipeline.training.loop as loop
    tmp = Path({tmp!r})
    model = dataclasses.replace(MODEL, lora=LoraConfig(dropout={dropout}))
    original = loop._save
    def save(engine, sched, progress, checkpoints):
        original(engine, sched, progress, checkpoints)
        print("checkpoint", progress.step, flush=True)
        time.sleep(600)  # SIGKILL comes here, after the first checkpoint
    loop._save = save
    fit(corpus(tmp), config(tmp), model)
    """
)


@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_a_run_killed_after_a_checkpoint_resumes_bitwise(tmp_path, dropout):
    """SIGKILL after the checkpoint of step 2, then the same command again: the same weights,
    DSSL queues and curves as a run never stopped (bitwise: the batches are a function of the
    step, every RNG state is restored, and the CPU kernels are deterministic). With the
    default's LoRA dropout (0.05) too: the global RNG draws its masks, so a draw between the
    restored state and the next step (the data loader's base seed, drawn when its iterator is
    made) once shifted every mask after the resumed step (issue 27)."""
    import dataclasses

    from vmad_pipeline.configs.model import LoraConfig

    model = dataclasses.replace(MODEL, lora=LoraConfig(dropout=dropout))
    straight = fit(corpus(tmp_path), config(tmp_path / "straight"), model)
    script = KILLED_RUN.format(
        tests=str(Path(__file__).parents[2]), tmp=str(tmp_path), dropout=dropout
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "checkpoint 2"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert steps_written(tmp_path) == [2]
    resumed = fit(corpus(tmp_path), config(tmp_path), model)
    assert resumed.summary["steps_this_run"] == 4
    a, b = trainable(straight.model), trainable(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(straight.model.dssl.queue_v.feats, resumed.model.dssl.queue_v.feats)
    assert straight.curves["loss"] == resumed.curves["loss"]


def test_other_parameters_never_resume_and_say_why(tmp_path, caplog):
    data = corpus(tmp_path)
    fit(data, config(tmp_path))
    caplog.set_level("INFO")
    other = fit(data, config(tmp_path, lr=1e-3))
    assert other.summary["steps_this_run"] == 6
    assert "starting fresh" in caplog.text and "train.lr" in caplog.text
    assert "model.frozen" not in caplog.text  # tuples against stored JSON lists are equal
    # a parameter that changes nothing computed (progress, workers) still resumes
    caplog.clear()
    again = fit(data, config(tmp_path, data=DataConfig(workers=0), progress=False))
    assert again.summary["steps_this_run"] == 0


def test_a_truncated_checkpoint_is_skipped_for_the_one_before(tmp_path, caplog):
    data = corpus(tmp_path)
    fit(data, config(tmp_path))
    newest = next((tmp_path / "ckpt").glob("*/step-0000006")) / "state.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    caplog.set_level("INFO")
    again = fit(data, config(tmp_path))
    assert "skipping damaged training checkpoint" in caplog.text
    assert "resumed from the checkpoint of step 4" in caplog.text
    assert again.summary["steps_this_run"] == 2


def test_the_same_batches_with_0_and_2_workers(tmp_path):
    from vmad_pipeline.models.build import build_vmad
    from vmad_pipeline.training.data import StepBatches, TrainingSamples, collate
    from vmad_pipeline.training.fit import _spec

    rows, roots, _, tok = corpus(tmp_path)
    cfg = config(tmp_path)
    model = build_vmad(MODEL, tok, train_classes=["bolt", "part"])
    samples = TrainingSamples(rows, roots, {}, cfg, _spec(model), tok)

    def batches(workers: int) -> list[dict]:
        sampler = StepBatches(len(samples), 4, seed=0, steps=4)
        loader = torch.utils.data.DataLoader(
            samples,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=lambda b: collate(b, tok.pad_token_id),
        )
        return list(loader)

    zero, two = batches(0), batches(2)
    assert len(zero) == len(two) == 4
    for a, b in zip(zero, two, strict=True):
        for key in ("images", "masks", "input_ids", "labels", "boxes", "oracle"):
            assert torch.equal(a[key], b[key]), key


def test_the_batch_split_over_ranks_and_accumulation_is_the_global_batch():
    from vmad_pipeline.training.data import StepBatches

    one = list(StepBatches(20, 8, seed=3, steps=5))
    split = [list(StepBatches(20, 8, seed=3, steps=5, rank=r, world=2, accum=2)) for r in range(2)]
    for step in range(5):
        parts = [split[r][2 * step + m] for m in range(2) for r in range(2)]
        assert sum(parts, []) == one[step]  # micro-batch-major, then rank: the batch order
    resumed = list(StepBatches(20, 8, seed=3, steps=5, start=3))
    assert resumed == one[3:]


def test_an_unreadable_image_stops_training_naming_it_or_is_skipped(tmp_path, caplog, monkeypatch):
    """An image found unreadable after the checkpoint of step 2: the run stops naming the file
    and the checkpoint stays intact; with on_error: skip the run goes on and counts it."""
    from vmad_pipeline.training.state import Checkpoints

    data = corpus(tmp_path)
    rows, roots, _, _ = data
    bad = Path(roots["s"]) / rows.iloc[2]["image_path"]
    good = bad.read_bytes()
    write = Checkpoints.write

    def write_then_break(self, step, state):
        out = write(self, step, state)
        bad.write_bytes(b"not an image")
        return out

    monkeypatch.setattr(Checkpoints, "write", write_then_break)
    with pytest.raises(ValueError, match=rows.iloc[2]["image_path"]):
        fit(data, config(tmp_path))
    monkeypatch.undo()
    assert steps_written(tmp_path) == [2]  # the last checkpoint stays
    caplog.set_level("INFO")
    skipped = fit(data, config(tmp_path / "skip", data=DataConfig(on_error="skip")))
    assert skipped.summary["skipped_images"] >= 1
    assert "skipped a training sample" in caplog.text
    bad.write_bytes(good)


def test_validation_scores_a_held_out_slice_and_keeps_the_best(tmp_path):
    data = corpus(tmp_path, n=6)
    cfg = config(
        tmp_path,
        validation=ValidationConfig(fraction=0.34),
        eval_every=2,
        keep="best",
    )
    out = fit(data, cfg)
    assert out.summary["validation_images"] == 4 and out.summary["train_images"] == 8
    assert [v["step"] for v in out.validation] == [2, 4, 6]
    assert all(np.isfinite(v["loss"]) for v in out.validation)
    scores = [v["pixel_auroc"] for v in out.validation]
    assert out.summary["best_step"] == out.validation[int(np.nanargmax(scores))]["step"]


SIGTERM_RUN = textwrap.dedent(
    """
    import sys, os
    sys.path[:0] = [{tests!r}]
    from helpers.training import corpus, fit, train_config as config
    from pathlib import Path
    import vmad_pipeline.training.loop as loop
    tmp = Path({tmp!r})
    data = corpus(tmp)
    original = loop._record
    def record(progress, values, lr):  # SIGTERM arrives during step 3
        original(progress, values, lr)
        if progress.step == 3:
            os.kill(os.getpid(), 15)
    loop._record = record
    fit(data, config(tmp, steps=6))
    """
)


def test_sigterm_writes_a_checkpoint_at_the_step_it_stopped(tmp_path):
    here = Path(__file__).parent
    script = SIGTERM_RUN.format(tests=str(here.parents[1]), tmp=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == -signal.SIGTERM, proc.stderr[-2000:]
    assert steps_written(tmp_path) == [2, 3]  # every 2 steps, and step 3 on SIGTERM
    meta = json.loads(next((tmp_path / "ckpt").glob("*/step-0000003/meta.json")).read_text())
    assert meta["step"] == 3
