"""Strict loads: every weight file read into a model is compared with the keys the model
expects; anything missing or unexpected stops the load, named. Where a key is legitimately
absent (the frozen parts of a pretrained preset, which load from the base weights), the caller
says so by passing the rule that explains it."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import nn

MAX_NAMED = 8  # keys named in an error


class WeightsMismatchError(ValueError):
    """A weight file does not hold exactly the weights the model expects."""


def _named(keys: set[str]) -> str:
    shown = sorted(keys)[:MAX_NAMED]
    more = f" (+{len(keys) - MAX_NAMED} more)" if len(keys) > MAX_NAMED else ""
    return ", ".join(shown) + more


def check_keys(expected: set[str], loaded: set[str], what: str, rule: str = "") -> None:
    """WeightsMismatchError naming what is missing from ``loaded`` and what it holds beyond
    ``expected`` (``rule`` says which keys are absent on purpose, and why)."""
    _fail(expected - loaded, loaded - expected, what, rule)


def _fail(missing: set[str], unexpected: set[str], what: str, rule: str = "") -> None:
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_named(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_named(unexpected)}")
    raise WeightsMismatchError(
        f"{what} does not hold the weights the model expects ({'; '.join(parts)})"
        + (f". Expected absent by rule: {rule}" if rule else "")
        + ". The file is damaged or from another model; re-create it."
    )


def load_parts(parts: dict[str, nn.Module], path: Path, expected: set[str], rule: str = "") -> None:
    """Load ``path`` (safetensors, keys ``<part>.<key>``) into ``parts`` after checking its keys
    against ``expected`` exactly; shapes are checked by ``load_state_dict``."""
    state = load_file(path)
    check_keys(expected, set(state), str(path), rule)
    for name, part in parts.items():
        prefix = f"{name}."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            part.load_state_dict(sub, strict=False)  # every key checked above


def from_pretrained_strict(cls, path: Path, **kwargs):
    """``cls.from_pretrained(path)`` that fails on missing, unexpected or mis-shaped weights
    (transformers only warns and initialises missing ones at random)."""
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    missing = set(info.get("missing_keys") or ())
    missing |= {f"{m[0]} (shape)" for m in info.get("mismatched_keys") or ()}
    _fail(missing, set(info.get("unexpected_keys") or ()), str(path))
    return model


def check_adapter(llm: nn.Module, path: Path) -> None:
    """The adapter file holds exactly the adapter weights the wrapped LLM expects (peft only
    warns about missing adapter keys and leaves them at their initial values)."""
    from peft import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(llm).keys())
    loaded = set(load_file(path / "adapter_model.safetensors").keys())
    check_keys(expected, loaded, str(path / "adapter_model.safetensors"))
