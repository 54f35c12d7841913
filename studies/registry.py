"""Study names -> modules, imported lazily so `hessian-lab study list` stays fast and robust.

A study is any module that follows the contract in ``docs/dev/contracts.md`` ("Studies"). The
built-in table below names the planned studies; a study only shows up in :func:`names` once its
module imports. Other studies plug in with :func:`register` (from Python) or with the environment
variable ``HESSIAN_LAB_STUDIES="name=package.module,other=pkg.mod"`` (for the command line).

Example:
  >>> from hessian_lab.studies import registry
  >>> "edge_of_stability" in registry.planned()
  True
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = [
    "ENV_VAR",
    "StudyImportError",
    "UnknownStudyError",
    "available",
    "get",
    "names",
    "planned",
    "register",
    "unregister",
]

ENV_VAR = "HESSIAN_LAB_STUDIES"

_BUILTIN: dict[str, str] = {
    name: f"hessian_lab.studies.{name}"
    for name in (
        "uv_model",
        "edge_of_stability",
        "momentum",
        "adaptive_eos",
        "stochastic_eos",
        "catapult",
        "early_phase_diagram",
        "warmup",
        "critical_sharpness",
        "batch_size",
        "central_flow",
        "block_spectra",
    )
}
_registered: dict[str, str | ModuleType] = {}


class UnknownStudyError(ValueError):
    """No study of that name is registered, or its module does not exist (yet)."""


class StudyImportError(RuntimeError):
    """A study's module exists but raised while being imported."""


def _from_env() -> dict[str, str]:
    table = {}
    for item in os.environ.get(ENV_VAR, "").split(","):
        if not item.strip():
            continue
        name, sep, module = item.partition("=")
        if not sep or not name.strip() or not module.strip():
            raise UnknownStudyError(f"{ENV_VAR}: expected 'name=package.module', got {item!r}")
        table[name.strip()] = module.strip()
    return table


def _table() -> dict[str, str | ModuleType]:
    # Later sources win: built-in < environment < register().
    return {**_BUILTIN, **_from_env(), **_registered}


def register(name: str, module: str | ModuleType, *, replace: bool = False) -> None:
    """Register a study under ``name``: a dotted module path (imported on first use) or a module.

    Raises:
      ValueError: ``name`` is already registered and ``replace`` is False.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"name: must be a non-empty string, got {name!r}")
    if name in _table() and not replace:
        raise ValueError(f"name: study {name!r} is already registered (pass replace=True)")
    _registered[name] = module


def unregister(name: str) -> None:
    """Undo :func:`register` for ``name`` (a built-in name falls back to its built-in module)."""
    _registered.pop(name, None)


def planned() -> list[str]:
    """Every registered name, whether or not its module imports, sorted."""
    return sorted(_table())


def get(name: str) -> ModuleType:
    """Import and return the study module registered as ``name``.

    Raises:
      UnknownStudyError: ``name`` is not registered, or its module does not exist.
      StudyImportError: the module exists but fails to import.
    """
    table = _table()
    if name not in table:
        raise UnknownStudyError(
            f"unknown study {name!r}; available: {', '.join(names()) or '(none yet)'}"
        )
    target = table[name]
    if isinstance(target, ModuleType):
        return target
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        # Only "the study module itself is missing" means not available; a missing dependency
        # inside an existing study is a real failure.
        if e.name is not None and (target == e.name or target.startswith(e.name + ".")):
            raise UnknownStudyError(
                f"study {name!r} is planned but not available yet (no module {target})"
            ) from e
        raise StudyImportError(f"study {name!r}: importing {target} failed: {e}") from e
    except Exception as e:
        raise StudyImportError(
            f"study {name!r}: importing {target} failed: {type(e).__name__}: {e}"
        ) from e


def available() -> dict[str, str | None]:
    """Map every registered name to ``None`` if its module imports, else the reason it does not."""
    status: dict[str, str | None] = {}
    for name in sorted(_table()):
        try:
            get(name)
            status[name] = None
        except (UnknownStudyError, StudyImportError) as e:
            status[name] = str(e)
    return status


def names() -> list[str]:
    """Names of the studies whose module imports, sorted."""
    return [name for name, reason in available().items() if reason is None]
