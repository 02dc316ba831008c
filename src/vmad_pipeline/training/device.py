"""Where the model runs and in which precision (method.md section 3: bf16 on a GPU)."""

from __future__ import annotations

import contextlib

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


def place_model(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move to ``device``; in bf16 the frozen weights are stored in bf16 (half the memory)
    while trained ones stay fp32 for the optimiser, and :func:`autocast` runs the maths."""
    model.to(device)
    if dtype != torch.float32:
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)
    return model


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
