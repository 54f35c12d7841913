"""Study configs: typed overrides from strings (``--set lr=0.1``) or JSON values.

A study's ``Config`` is a frozen dataclass; :func:`with_overrides` reads each value according to
the field's annotation with pydantic's ``TypeAdapter`` (numbers, booleans ``true``/``false``,
literals by value; on the command line also tuples as ``0.1,0.2`` and optionals as ``none``) and
lets the Config's own checks reject bad values. :func:`normalize` is the
JSON form ``write_json`` stores, so a stored config and a new one compare equal. :func:`presets`
names a study's preset Configs for ``--preset``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from pydantic import TypeAdapter, ValidationError

from hessian_lab.io import to_jsonable

__all__ = [
    "SweepError",
    "config_from_dict",
    "config_to_dict",
    "field_types",
    "normalize",
    "preset",
    "presets",
    "read_overrides",
    "replace_checked",
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


_NONE = ("none", "null")


def _message(key: str, error: ValidationError, value: Any) -> str:
    """Pydantic's first complaint as one line: ``"lrs[1]: must be a valid number, got 'x'"``."""
    first = error.errors(include_url=False)[0]
    where = key + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
    msg = re.sub(r"^Input should be ", "must be ", first["msg"])
    return f"{where}: {msg}, got {value!r}"


def _bool_as_number(value: Any, out: Any) -> bool:
    """Whether a boolean in ``value`` came out of validation as a number in ``out``."""
    if isinstance(value, bool):
        return not isinstance(out, bool)
    if isinstance(value, list | tuple) and isinstance(out, list | tuple) and len(value) == len(out):
        return any(_bool_as_number(v, o) for v, o in zip(value, out, strict=True))
    return False


def _read(tp: Any, value: Any, key: str) -> Any:
    """Read ``value`` (a command-line string or a JSON value) as type ``tp`` with pydantic.

    Strings go through pydantic's string mode (``3``, ``0.1``, ``true``/``yes``/``1``); our own
    conventions are only the ones pydantic has no notion of: a comma-separated list for a tuple
    (``0.1,0.2``) and ``none`` for an optional field.
    """
    adapter = TypeAdapter(tp)
    if not isinstance(value, str):
        try:
            out = adapter.validate_python(value)
        except ValidationError as e:
            raise ValueError(_message(key, e, value)) from None
        if _bool_as_number(value, out):  # pydantic's lax mode reads a JSON true as the int 1
            raise ValueError(f"{key}: must be a number, not a boolean, got {value!r}")
        return out
    options = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(options) < len(
        typing.get_args(tp)
    ):
        if value.strip().lower() in _NONE:
            return None
        tp = options[0] if len(options) == 1 else typing.Union[tuple(options)]  # noqa: UP007
    if typing.get_origin(tp) in (tuple, list) or tp in (tuple, list):
        items = [s.strip() for s in value.split(",")] if value.strip() else []
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(items)
        elif args and len(args) != len(items):
            raise ValueError(f"{key}: must be {len(args)} comma-separated values, got {value!r}")
        items = [
            _read(a, item, f"{key}[{i}]") for i, (a, item) in enumerate(zip(args, items, strict=True))
        ] if args else items  # fmt: skip
        return _read(tp, items, key)
    try:
        return adapter.validate_strings(value)
    except ValidationError as e:
        raise ValueError(_message(key, e, value)) from None


def read_overrides(config: Any, overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Read ``overrides`` against ``config``'s field types, without building a Config.

    ``overrides`` is either ``["key=value", ...]`` (the CLI's ``--set``; tuples are written
    ``0.1,0.2``, booleans ``true``/``false``, optionals ``none``) or a mapping of JSON values.
    Returns ``{field: value}``; the cross-field checks run when a Config is built from them.

    Raises:
      SweepError: an unknown key (the message lists the allowed ones), a key given twice, or an
        unreadable value.
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
            if key.strip() in dict(pairs):
                raise SweepError(f"--set: {key.strip()} is given twice; set each field once")
            pairs.append((key.strip(), value))
    unknown = [k for k, _ in pairs if k not in types_]
    if unknown:
        raise SweepError(
            f"unknown config key {unknown[0]!r} for {type(config).__module__.rsplit('.', 1)[-1]}"
            f"; allowed: {', '.join(types_)}"
        )
    try:
        return {k: _read(types_[k], v, k) for k, v in pairs}
    except (ValueError, TypeError) as e:
        raise SweepError(str(e)) from e


def replace_checked(config: Any, values: Mapping[str, Any]) -> Any:
    """``config`` with ``values`` (already read) replaced at once: the Config's checks see the
    final combination, whatever order the values came in.

    Raises:
      SweepError: a value or combination the Config rejects.
    """
    try:
        return dataclasses.replace(config, **values)
    except (ValueError, TypeError) as e:
        raise SweepError(str(e)) from e


def with_overrides(config: Any, overrides: Sequence[str] | Mapping[str, Any]) -> Any:
    """Return ``config`` with fields replaced, each value read according to the field's type
    (:func:`read_overrides`), all at once (:func:`replace_checked`).

    Raises:
      SweepError: an unknown key (the message lists the allowed ones), an unreadable value, or a
        value the Config rejects.
    """
    return replace_checked(config, read_overrides(config, overrides))


def config_from_dict(module: ModuleType, stored: Mapping[str, Any]) -> Any:
    """Rebuild a study's Config from its stored JSON form (lists become tuples, etc.).

    A field missing from ``stored`` (saved before the field existed) takes the value in the
    study's optional ``STORED_DEFAULTS`` mapping, which keeps an old run's meaning, else DEFAULT's.
    """
    return with_overrides(module.DEFAULT, {**getattr(module, "STORED_DEFAULTS", {}), **stored})


def presets(module: ModuleType) -> dict[str, Any]:
    """A study's presets by their command-line names: ``tiny``, ``default``, then every other
    module-level upper-case Config instance, lower-cased (``CNN_MNIST`` -> ``cnn_mnist``)."""
    kind = type(module.DEFAULT)
    found = {"tiny": module.TINY, "default": module.DEFAULT}
    for name, value in vars(module).items():
        if name.isupper() and isinstance(value, kind) and name.lower() not in found:
            found[name.lower()] = value
    return found


def preset(module: ModuleType, name: str) -> Any:
    """The preset called ``name`` (:func:`presets`).

    Raises:
      SweepError: no such preset; the message lists the study's presets.
    """
    found = presets(module)
    if name not in found:
        raise SweepError(
            f"--preset: unknown preset {name!r} for "
            f"{getattr(module, 'NAME', module.__name__.rsplit('.', 1)[-1])}; "
            f"choose from {', '.join(found)}"
        )
    return found[name]
