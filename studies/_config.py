"""Study configs: typed overrides from strings (``--set lr=0.1``) or JSON values.

A study's ``Config`` is a frozen dataclass; :func:`with_overrides` reads each value according to
the field's annotation (tuples ``0.1,0.2``, booleans ``true``/``false``, optionals ``none``,
literals by value) and lets the Config's own checks reject bad values. :func:`normalize` is the
JSON form ``write_json`` stores, so a stored config and a new one compare equal.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, Literal

from hessian_lab.io import to_jsonable

__all__ = [
    "SweepError",
    "config_from_dict",
    "config_to_dict",
    "field_types",
    "normalize",
    "with_overrides",
]


class SweepError(ValueError):
    """Bad input: a wrong option, a mismatched or corrupted run directory (CLI exit code 2)."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """The JSON form of a Config dataclass, exactly as ``write_json`` stores it."""
    return normalize(dataclasses.asdict(config))


def normalize(obj: Any) -> Any:
    """``obj`` as it reads back from ``write_json``: JSON types only, keys sorted."""
    return json.loads(json.dumps(to_jsonable(obj), sort_keys=True))


def field_types(config_cls: type, example: Any) -> dict[str, Any]:
    """Map each init field of a Config dataclass to its resolved type annotation."""
    fields = [f for f in dataclasses.fields(config_cls) if f.init]
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # unresolved annotations: fall back on the example's value types
        hints = {}
    return {f.name: hints.get(f.name, type(getattr(example, f.name))) for f in fields}


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Convert ``value`` (a string from the command line, or a JSON value) to type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        if len(options) < len(args) and (
            value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        ):
            return None
        for option in options:
            try:
                return _coerce(option, value, key)
            except ValueError:
                continue
        raise ValueError(f"{key}: cannot read {value!r} as {tp}")
    if origin is Literal:
        for allowed in args:
            try:
                if _coerce(type(allowed), value, key) == allowed:
                    return allowed
            except ValueError:
                continue
        raise ValueError(f"{key}: must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, str):
            items: list[Any] = [s.strip() for s in value.split(",")] if value.strip() else []
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise ValueError(f"{key}: expected comma-separated values, got {value!r}")
        if args and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(args[0], v, key) for v in items]
        elif args:
            if len(items) != len(args):
                raise ValueError(f"{key}: expected {len(args)} values, got {len(items)}")
            items = [_coerce(a, v, key) for a, v in zip(args, items, strict=True)]
        return list(items) if (origin or tp) is list else tuple(items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and number.is_integer():
            return int(number)
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def with_overrides(config: Any, overrides: Sequence[str] | Mapping[str, Any]) -> Any:
    """Return ``config`` with fields replaced, each value read according to the field's type.

    ``overrides`` is either ``["key=value", ...]`` (the CLI's ``--set``; tuples are written
    ``0.1,0.2``, booleans ``true``/``false``, optionals ``none``) or a mapping of JSON values.

    Raises:
      SweepError: an unknown key (the message lists the allowed ones), an unreadable value, or a
        value the Config rejects.
    """
    types_ = field_types(type(config), config)
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    else:
        pairs = []
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise SweepError(f"--set: expected key=value, got {item!r}")
            pairs.append((key.strip(), value))
    unknown = [k for k, _ in pairs if k not in types_]
    if unknown:
        raise SweepError(
            f"unknown config key {unknown[0]!r} for {type(config).__module__.rsplit('.', 1)[-1]}"
            f"; allowed: {', '.join(types_)}"
        )
    try:
        values = {k: _coerce(types_[k], v, k) for k, v in pairs}
        return dataclasses.replace(config, **values)
    except (ValueError, TypeError) as e:
        raise SweepError(f"config: {e}") from e


def config_from_dict(module: ModuleType, stored: Mapping[str, Any]) -> Any:
    """Rebuild a study's Config from its stored JSON form (lists become tuples, etc.)."""
    return with_overrides(module.DEFAULT, stored)
