"""Your own problem as an entry point: ``FILE.py:FUNCTION`` or ``package.module:FUNCTION``.

The function takes keyword arguments (whatever it declares: ``width``, ``depth``, ``seed``, ...)
and returns ``(model, loss, data)``:

- ``model``: an init/apply pair (``hessian_lab.models.Model``, or any object with
  ``init(key) -> params`` and ``apply(params, x) -> outputs``), a ``flax.linen`` Module, a
  ``flax.nnx`` Module or an ``equinox`` Module (applied to one example at a time, so it is
  vmapped over the batch). nnx and equinox modules arrive initialised: their parameters are the
  ones the function built (use its ``seed`` argument), whatever the key.
- ``loss``: ``"mse"`` or ``"xent"`` (``hessian_lab.losses``), or ``loss(outputs, y) -> scalar``,
  the mean loss of a batch.
- ``data``: ``(x, y)`` arrays with a shared leading axis. A function that declares a ``data``
  argument receives the ``--data`` examples there (a ``hessian_lab.data.Dataset`` of numpy
  arrays: images NHWC in ``[0, 1]``, int labels) and may return them reshaped or encoded, or
  return only ``(model, loss)`` to use them as they are.

A function that declares ``seed`` receives the run's seed. A model with state (BatchNorm
statistics, dropout: a linen Module with collections besides ``params``, an nnx Module with
``BatchStat`` s, an ``(equinox Module, eqx.nn.State)`` pair) needs ``build(..., stateful=True)``:
the :class:`Problem` then holds a :class:`~hessian_lab.StatefulModel`, a
:class:`~hessian_lab.StatefulLoss` and the initial ``state``. Without it such a model is refused
in words (``hessian-lab sharpness`` builds with it, and so do the studies that carry state:
edge_of_stability, momentum, critical_sharpness). A :class:`~hessian_lab.StatefulModel` itself
(``hl.models.cnn(norm="batchnorm")``) is taken as it is.

Every check runs before any work: the entry point imports, the arguments match the function's
signature, what it returns is a model, a loss and data, and ``jax.eval_shape`` of ``init`` and
of the loss on the data gives parameters and a scalar (milliseconds, nothing computed). Errors
are ``ValueError`` starting with the option's name (``problem``, ``data``, ``problem_args``).

Example:
  >>> import numpy as np
  >>> from hessian_lab import data, problem
  >>> ds = data.Dataset(np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32))
  >>> p = problem.build("hessian_lab.problem:example_mlp", data=ds, args={"width": 5})
  >>> p.description
  'hessian_lab.problem:example_mlp(width=5) on 4 examples'
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import losses
from ._problem_checks import check_shapes, unpack
from ._stateful import StatefulModel, curvature_loss, stateful_loss
from ._stateful_frameworks import carries_state as carries_state  # for the studies
from ._stateful_frameworks import declares, linen_dropout_off, stateful_model
from .models import Model, mlp

__all__ = ["Problem", "build", "example_mlp", "load_entry", "parse_args", "parse_entry"]


class Problem(NamedTuple):
    """A full-batch training problem.

    Attributes:
      model: ``Model(init, apply)``: ``init(key) -> params``, ``apply(params, x) -> outputs``;
        or a :class:`~hessian_lab.StatefulModel` (``build(..., stateful=True)``).
      loss_fn: ``loss_fn(params, (x, y)) -> scalar``, or a :class:`~hessian_lab.StatefulLoss`.
      data: ``(x, y)`` as jax arrays (``x`` in the default float dtype).
      description: a one-line human description.
      state: the initial model state (BatchNorm statistics) of a stateful model, else None.
    """

    model: Any
    loss_fn: Any
    data: tuple
    description: str = ""
    state: Any = None


def parse_entry(text: Any, *, name: str = "problem") -> tuple[str, str]:
    """Split ``"FILE.py:FUNCTION"`` or ``"package.module:FUNCTION"``; check the syntax only."""
    forms = "FILE.py:FUNCTION or package.module:FUNCTION"
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"{name}: must be an entry point {forms}, got {text!r}")
    where, _, function = text.strip().rpartition(":")
    if not where or not function.isidentifier():
        raise ValueError(f"{name}: must be an entry point {forms}, got {text!r}")
    if not _is_file(where) and not all(part.isidentifier() for part in where.split(".")):
        raise ValueError(f"{name}: {where!r} is neither a .py file nor a module name ({forms})")
    return where, function


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def load_entry(text: str, *, name: str = "problem") -> Callable:
    """Import the entry point and return its function.

    A file is executed as a fresh module (its own folder importable while it runs); a module name
    is imported as usual.

    Raises:
      ValueError: starting with ``name``: bad syntax, no such file or module, an import that
        failed, or no callable of that name.
    """
    where, function = parse_entry(text, name=name)
    if _is_file(where):
        path = Path(where).expanduser()
        if not path.is_file():
            raise ValueError(f"{name}: no file {where} (from {text!r})")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        spec = importlib.util.spec_from_file_location(f"_hessian_lab_problem_{digest}", path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ValueError(f"{name}: running {where} failed: {type(e).__name__}: {e}") from None
        finally:
            sys.path.remove(str(path.resolve().parent))
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise ValueError(f"{name}: no module {e.name!r} (importing {where})") from None
        except Exception as e:
            raise ValueError(f"{name}: importing {where} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        what = "no function" if fn is None else f"a {type(fn).__name__}, not a function, named"
        raise ValueError(f"{name}: {where} has {what} {function!r}")
    return fn


def _value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, else the text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for read in (int, float):
        try:
            return read(text)
        except ValueError:
            pass
    return text.strip()


def parse_args(items: Any, *, name: str = "problem_args") -> dict[str, Any]:
    """``("width=32", "lr=0.1")`` -> ``{"width": 32, "lr": 0.1}``; a mapping passes through.

    Values are read as int, float, true/false, none, or else kept as text.
    """
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items or ():
        key, eq, value = str(item).partition("=")
        if not eq or not key.strip().isidentifier():
            raise ValueError(f"{name}: expected NAME=VALUE, got {item!r}")
        if key.strip() in out:
            raise ValueError(f"{name}: {key.strip()} is given twice")
        out[key.strip()] = _value(value)
    return out


def _call(fn: Callable, text: str, kwargs: dict, name: str, args_name: str) -> Any:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in named and not var_kw]
    if unknown:
        raise ValueError(
            f"{args_name}: {text} takes no argument {unknown[0]!r} "
            f"(it takes: {', '.join(named) or 'nothing'})"
        )
    missing = [
        k for k, p in params.items()
        if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        and k not in kwargs
    ]  # fmt: skip
    if missing:
        raise ValueError(f"{args_name}: {text} needs a value for {missing[0]!r} (NAME=VALUE)")
    try:
        return fn(**kwargs)
    except Exception as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "data")
        msg = " ".join(str(e).split())
        raise ValueError(f"{name}: {text}({shown}) raised {type(e).__name__}: {msg}") from None


def _framework(obj: Any, module: str) -> Any:
    """The framework module if it is already imported (a model from it implies it is)."""
    return sys.modules.get(module)


def _path(path: tuple) -> str:
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path[1:]]
    return ".".join(p for p in parts if p != "value")


def _no_state(collections: list[str], what: str, name: str) -> None:
    if collections:
        raise ValueError(
            f"{name}: the model holds state ({', '.join(collections)}) besides its parameters; "
            f"{what} models with state (BatchNorm, dropout) need problem.build(..., stateful=True)"
            " (hessian-lab sharpness and the studies edge_of_stability, momentum and "
            "critical_sharpness take them)"
        )


def as_model(obj: Any, x: Any, *, name: str = "problem") -> Model:
    """Return ``Model(init, apply)`` for an init/apply pair, a flax linen/nnx or equinox Module.

    ``x`` is a batch of inputs (a flax linen Module is initialised on ``x[:1]``).
    """
    linen, nnx, eqx = (_framework(obj, m) for m in ("flax.linen", "flax.nnx", "equinox"))
    if linen is not None and isinstance(obj, linen.Module):
        # as the stateful adapter calls it with dropout off: train mode, every nn.Dropout the
        # identity (so a module with dropout needs no key and one with `train` gets it)
        sample = jnp.asarray(x[:1])
        kw = {"train": True} if declares(obj.__call__, "train") else {}

        def init(key):
            with linen_dropout_off():
                variables = obj.init(key, sample, **kw)
            _no_state(sorted(k for k in variables if k != "params"), "flax linen", name)
            return variables["params"]

        def apply(params, inputs):
            with linen_dropout_off():
                return obj.apply({"params": params}, inputs, **kw)

        return Model(init, apply)
    if nnx is not None and isinstance(obj, nnx.Module):
        # a Dropout's random streams are no state with dropout off (deterministic), as measured
        graphdef, params, rngs, *rest = nnx.split(obj, nnx.Param, nnx.RngState, ...)
        paths = jax.tree_util.tree_leaves_with_path(rest)
        _no_state(sorted({_path(path) for path, _ in paths}), "flax nnx", name)

        def apply_nnx(p, inputs):
            m = nnx.merge(graphdef, p, rngs, *rest, copy=True)
            for _, sub in nnx.iter_modules(m):
                if isinstance(sub, nnx.Dropout):
                    sub.deterministic = True
            return m(inputs)

        return Model(lambda key: params, apply_nnx)
    if eqx is not None and isinstance(obj, eqx.Module):
        # dropout off (eqx.nn.Dropout needs no key then), as the stateful adapter measures
        params, static = eqx.partition(eqx.nn.inference_mode(obj), eqx.is_inexact_array)
        return Model(lambda key: params, lambda p, inputs: jax.vmap(eqx.combine(p, static))(inputs))
    if eqx is not None and isinstance(obj, tuple | list) and len(obj) == 2:
        if isinstance(obj[1], eqx.nn.State):
            _no_state(["eqx.nn.State"], "equinox", name)
    if isinstance(obj, tuple | list) and len(obj) == 2 and all(map(callable, obj)):
        return Model(*obj)
    if callable(getattr(obj, "init", None)) and callable(getattr(obj, "apply", None)):
        return Model(obj.init, obj.apply)
    raise ValueError(
        f"{name}: the model must be an init/apply pair, a flax linen or nnx Module or an "
        f"equinox Module, got {type(obj).__name__}"
    )


def _as_loss(loss: Any, apply: Callable, name: str) -> Callable:
    if isinstance(loss, str):
        if loss not in ("mse", "xent"):
            raise ValueError(f"{name}: the loss must be 'mse', 'xent' or a function, got {loss!r}")
        return losses.make_loss_fn(apply, loss)
    if not callable(loss):
        raise ValueError(
            f"{name}: the loss must be 'mse', 'xent' or loss(outputs, y), got {loss!r}"
        )

    def loss_fn(params, batch):
        x, y = batch
        return loss(apply(params, x), y)

    return loss_fn


def build(
    entry: str | Callable,
    *,
    data: Any = None,
    args: Any = None,
    seed: int | None = None,
    name: str = "problem",
    args_name: str = "problem_args",
    data_description: str | None = None,
    label: str | None = None,
    stateful: bool = False,
) -> Problem:
    """Call an entry point and return its :class:`Problem`, checked (module doc).

    Args:
      entry: ``"FILE.py:FUNCTION"``, ``"package.module:FUNCTION"``, or the function itself.
      data: the examples of ``--data``, handed to a function that declares ``data``.
      args: the function's arguments: a mapping, or ``("NAME=VALUE", ...)``.
      seed: handed to a function that declares ``seed`` (unless ``args`` sets it).
      name, args_name: the option names errors start with.
      data_description: what the description says the data are (default: "n examples").
      label: how errors and the description name a function passed as ``entry``.
      stateful: accept a model with state (module doc); a stateless model is built as usual.

    Raises:
      ValueError: naming the option, for anything the checks above find.
    """
    fn = load_entry(entry, name=name) if isinstance(entry, str) else entry
    text = entry if isinstance(entry, str) else label or getattr(fn, "__qualname__", repr(fn))
    kwargs = parse_args(args, name=args_name)
    try:
        declared = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        declared = {}
    if "data" in kwargs:
        raise ValueError(
            f"{args_name}: data is given by --data (the data spec), not as an argument"
        )
    shown = dict(kwargs)
    if data is not None and "data" in declared:
        kwargs["data"] = data
    if seed is not None and "seed" in declared and "seed" not in kwargs:
        kwargs["seed"] = seed
    model, loss, (x, y) = unpack(_call(fn, text, kwargs, name, args_name), data, text, name)
    x, y = _as_jax(x), _as_jax(y)
    call = ", ".join(f"{k}={v!r}" for k, v in shown.items())
    described = f"{text}({call}) on {data_description or f'{x.shape[0]} examples'}"
    if isinstance(model, StatefulModel) and stateful is not True:
        _no_state(["a StatefulModel's state"], "StatefulModel", name)
    try:
        if isinstance(model, StatefulModel):
            net = model
        else:
            net = stateful_model(model, x) if stateful is True else None
        loss_fn = None if net is None else stateful_loss(net.apply, loss)
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        raise ValueError(
            f"{name}: the stateful model of {text}: {type(e).__name__}: {msg}"
        ) from None
    if net is not None:
        check_shapes(net, curvature_loss(loss_fn, net.state), (x, y), text, name)
        return Problem(net, loss_fn, (x, y), described, net.state)
    net = as_model(model, x, name=name)
    loss_fn = _as_loss(loss, net.apply, name)
    check_shapes(net, loss_fn, (x, y), text, name)
    return Problem(net, loss_fn, (x, y), described)


def _as_jax(a: Any) -> jax.Array:
    """A jax array; floats in the default float dtype (float32, or float64 under x64)."""
    a = jnp.asarray(a)
    return a.astype(jnp.result_type(float)) if jnp.issubdtype(a.dtype, jnp.floating) else a


def example_mlp(
    *, data: Any, width: int = 32, depth: int = 1, activation: str = "tanh"
) -> tuple[Model, str, tuple]:
    """A reference entry point: an MLP on the flattened inputs, MSE on one-hot targets.

    ``hessian-lab sharpness --problem hessian_lab.problem:example_mlp --arg width=64`` runs it
    (the digits by default); your own file follows the same shape.
    """
    x = np.asarray(data.x).reshape(len(data.x), -1)
    y = np.asarray(data.y)
    if y.ndim == 1:  # int labels -> one-hot targets for the MSE
        y = np.eye(int(y.max()) + 1, dtype=x.dtype)[y]
    net = mlp(x.shape[1], y.shape[1], depth=depth, width=width, activation=activation)
    return net, "mse", (x, y)
