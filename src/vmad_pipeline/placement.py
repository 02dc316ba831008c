"""Where a model runs and in which precision (method.md section 3: bf16 on a GPU); shared by
training, evaluation and inference."""

from __future__ import annotations

import contextlib
import resource
import sys

import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable cuda is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but torch sees no CUDA device")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on cuda, fp32 on cpu."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def resolve_placement(device: str, precision: str) -> tuple[torch.device, torch.dtype]:
    """The ``device`` / ``precision`` parameters (train and evaluate) as torch objects."""
    resolved = resolve_device(device)
    return resolved, resolve_dtype(precision, resolved)


def place_model(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move to ``device``; frozen weights are stored in ``dtype`` (bf16: half the memory)
    while trained ones are kept in fp32 for the optimiser, and :func:`autocast` runs the maths.
    A model built in bf16 (to load a large checkpoint at half the memory) gets its trained
    weights back in fp32 here."""
    model.to(device)
    for p in model.parameters():
        target = torch.float32 if p.requires_grad else dtype
        if p.dtype != target:
            p.data = p.data.to(target)
    return model


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor moved to ``device``; one tensor under two names stays one tensor there (the
    small preset's two image branches read the same input once)."""
    moved: dict[int, torch.Tensor] = {}
    out = {}
    for name, value in tensors.items():
        if id(value) not in moved:
            moved[id(value)] = value.to(device)
        out[name] = moved[id(value)]
    return out


def peak_memory_mb() -> dict[str, float | None]:
    """Peak memory of this process so far, in MiB: host (resident set, ``getrusage``) and GPU
    (``torch.cuda.max_memory_allocated`` on the current device; None without CUDA)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    host = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_host_memory_mb": round(host, 1), "peak_gpu_memory_mb": gpu and round(gpu, 1)}
