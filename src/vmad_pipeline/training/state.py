"""Training checkpoints for exact resume: what they hold, where they live, how they are checked;
and SIGTERM's flag (:class:`Stop`), which ends training with a checkpoint of its step.

Layout: ``<checkpoint.dir>/<key>/step-<NNNNNNN>/`` with ``state.pt`` (trainable weights and
buffers such as DSSL's queues, optimiser, scheduler, every rank's RNG states, the step, the
curves so far, the best validation state) and ``meta.json`` (the step, the key, the parameters
and data hash it belongs to, and the SHA-256 of ``state.pt``). Each directory is written
atomically (``atomic.atomic_directory``); a directory whose hash does not match (a truncated or
corrupted file) is skipped, with a warning, for the one before it.

The key is a hash of the parameters that decide what training computes (``configs.train.RUN_ONLY``
excluded) and of the data (rows, RIAD answers, tokenizer), so a run never resumes a foreign
state: one with other parameters or data looks under another key, and says why it starts fresh.
The data position needs no file: the batches are a function of (seed, step)
(``training.data.StepBatches``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vmad_pipeline.atomic import atomic_directory
from vmad_pipeline.datasets.manifest import file_sha256

log = logging.getLogger(__name__)
STATE, META = "state.pt", "meta.json"


def stable_hash(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def resume_key(params: dict, data_hash: str) -> str:
    return stable_hash({"params": params, "data": data_hash})[:16]


def _metas(root: Path) -> list[tuple[Path, dict]]:
    """Every readable meta.json under ``root`` (any key), newest step last."""
    found = []
    for meta in root.glob(f"*/step-*/{META}"):
        try:
            found.append((meta.parent, json.loads(meta.read_text())))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda m: (m[1].get("step", -1), str(m[0])))


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The keys whose values differ between two nested parameter dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        a, b = list(a), list(b)  # stored as JSON lists, the configs hold tuples
    return [] if a == b else [prefix.rstrip(".")]


def why_fresh(root: Path, params: dict, data_hash: str) -> str | None:
    """Why the checkpoints under ``root`` (of other trainings) are not resumed: the parameters
    that differ and whether the data does; None when there are none."""
    others = _metas(root)
    if not others:
        return None
    _, meta = others[-1]
    diff = _differences(meta.get("params", {}), params)
    parts = []
    if diff:
        parts.append("parameters differ (" + ", ".join(diff[:8]) + ")")
    if meta.get("data_hash") != data_hash:
        parts.append("the training data differ")
    return "; ".join(parts) or "they belong to another training"


class Checkpoints:
    """The checkpoints of one training (one key)."""

    def __init__(self, root: str | Path, params: dict, data_hash: str, keep: int) -> None:
        self.root = Path(root)
        self.params, self.data_hash, self.keep = params, data_hash, keep
        self.key = resume_key(params, data_hash)
        self.dir = self.root / self.key

    def steps(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("step-*") if p.is_dir())

    def write(self, step: int, state: dict) -> Path:
        """Write the checkpoint of ``step`` atomically, then drop all but the last ``keep``."""
        target = self.dir / f"step-{step:07d}"
        with atomic_directory(target) as tmp:
            torch.save(state, tmp / STATE)
            meta = {
                "step": step,
                "key": self.key,
                "params": self.params,
                "data_hash": self.data_hash,
                "sha256": file_sha256(tmp / STATE),
            }
            (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
        for old in self.steps()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("training checkpoint: step %d -> %s", step, target)
        return target

    def latest(self) -> tuple[int, dict] | None:
        """(step, state) of the newest intact checkpoint of this training, or None. A damaged
        one (unreadable meta, hash mismatch, unloadable state) is skipped with a warning."""
        for path in reversed(self.steps()):
            try:
                meta = json.loads((path / META).read_text())
                if meta.get("key") != self.key:
                    raise ValueError(f"key {meta.get('key')} is not {self.key}")
                if file_sha256(path / STATE) != meta["sha256"]:
                    raise ValueError("state.pt does not match its SHA-256 (truncated or corrupt)")
                state = torch.load(path / STATE, map_location="cpu", weights_only=False)
            except (OSError, ValueError, KeyError, RuntimeError, EOFError) as err:
                log.warning("skipping damaged training checkpoint %s: %s", path, err)
                continue
            return int(meta["step"]), state
        return None

    def explain_fresh(self) -> None:
        """Log why this training starts at step 0."""
        reason = why_fresh(self.root, self.params, self.data_hash)
        if reason:
            log.info(
                "starting fresh: checkpoints under %s belong to another training: %s",
                self.root,
                reason,
            )


# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict:
    """Every random generator a training process draws from (python, numpy, torch, CUDA)."""
    import random

    import numpy as np

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Stop:
    """SIGTERM's flag: the loop checkpoints at the end of the current step and stops."""

    requested: bool = False
    previous: dict = field(default_factory=dict)

    def install(self) -> None:
        try:
            self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            pass

    def _handle(self, signum, frame) -> None:
        log.warning("SIGTERM: writing a checkpoint at the end of this step, then stopping")
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
