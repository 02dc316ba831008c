"""The base of every parameters dataclass: :class:`ConfigError`, :func:`check` and :func:`from_dict`.

Every parameter block that code consumes is turned into a frozen dataclass with
:func:`from_dict`, which rejects unknown keys and wrong types with an error that names
the full key (``train.model.projector.name``), so a typo in YAML or ``--params`` fails
loudly instead of silently using a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A parameter is missing, unknown or out of range; the message names the key."""


def check(cond: bool, key: str, msg: str) -> None:
    """Raise ``ConfigError("key: msg")`` unless ``cond``; :func:`from_dict` prefixes the parent
    keys (``train.model.``), so a dataclass names only its own field."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key)
    if origin is tuple:
        check(isinstance(value, list | tuple), key, f"expected a list, got {value!r}")
        (inner, *_rest) = typing.get_args(tp)
        return tuple(_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        check(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        _, inner = typing.get_args(tp)
        if dataclasses.is_dataclass(inner):
            return {k: from_dict(inner, v, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is float:
        check(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"expected a number, got {value!r}",
        )
        return float(value)
    if tp is int:
        check(
            isinstance(value, int) and not isinstance(value, bool),
            key,
            f"expected an integer, got {value!r}",
        )
        return value
    if tp is bool:
        check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if tp is str:
        check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, key: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly nested) mapping, validating keys and types."""
    data = {} if data is None else data
    check(isinstance(data, dict), key or cls.__name__, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    check(
        not unknown,
        f"{key}.{unknown[0]}" if key and unknown else (unknown or [""])[0],
        f"unknown parameter; valid keys here: {', '.join(sorted(names))}",
    )
    kwargs = {k: _convert(hints[k], v, f"{key}.{k}" if key else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{key}.{err}" if key else str(err)) from None
    except TypeError as err:
        raise ConfigError(f"{key or cls.__name__}: {err}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of a config (for checkpoints and MLflow params)."""
    return dataclasses.asdict(obj)


def check_placement(device: str, precision: str) -> None:
    """The ``device`` / ``precision`` parameters shared by train and evaluate."""
    check(precision in ("auto", "fp32", "bf16"), "precision", "one of auto, fp32, bf16")
    check(
        device in ("auto", "cpu") or device.startswith("cuda"),
        "device",
        "one of auto, cpu, cuda, cuda:N",
    )
