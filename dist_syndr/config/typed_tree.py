"""Typed trees of dataclasses from nested mappings: unknown keys and wrong types are refused, naming the dotted key.

:func:`from_dict` builds a dataclass (and its nested dataclasses) from a mapping,
coercing scalars to the annotated types: ``bool``, ``int``, ``float``, ``str``,
``Literal[...]`` choices, optional and ``list[...]`` fields. :func:`apply_override`
writes one ``a.b.c=value`` (the value parsed as a YAML scalar) into a nested mapping.
The schema itself is :mod:`dist_syndr.config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

import yaml


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys and bad types."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    # A section may name values that older configs wrote (run folders keep their config.yaml for good).
    legacy = getattr(cls, "LEGACY_VALUES", {})
    data = {name: _current_value(legacy.get(name), value) for name, value in data.items()}
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as error:
        raise ValueError(f"{prefix}{error}") from None


def _current_value(legacy: dict | None, value: Any) -> Any:
    """``value`` as today's schema spells it (a scalar an older config wrote is mapped; anything else kept)."""
    if legacy and isinstance(value, (str, int, float, bool)):
        return legacy.get(value, value)
    return value


def apply_override(tree: dict[str, Any], override: str) -> None:
    key, separator, raw = override.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ValueError(f"override {override!r}: expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ValueError(f"override {key}: cannot parse value {raw!r}: {error}") from None
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if value is None:
            return None
        return _coerce(options[0], value, key)
    if origin is Literal:
        return _coerce_choice(typing.get_args(hint), value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    return _coerce_scalar(hint, value, key)


def _coerce_choice(choices: tuple, value: Any, key: str) -> Any:
    is_bool_mixup = isinstance(value, bool) and not any(isinstance(choice, bool) for choice in choices)
    if is_bool_mixup or value not in choices:
        raise ValueError(f"{key}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


_SCALAR_TYPES: dict[type, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str, int, float)}


def _coerce_scalar(hint: type, value: Any, key: str) -> Any:
    accepted = _SCALAR_TYPES.get(hint)
    if accepted is None:
        return value
    if isinstance(value, accepted) and (hint is bool or not isinstance(value, bool)):
        return value if hint in (bool, int) else hint(value)
    raise ValueError(f"{key}: expected {hint.__name__}, got {value!r}")
