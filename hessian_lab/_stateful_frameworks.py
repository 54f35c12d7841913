"""Stateful models of flax linen, flax nnx and equinox as :class:`StatefulModel` s.

Each adapter returns ``apply(params, state, x, *, train, key) -> (outputs, new_state)`` on a
batch ``x``: BatchNorm uses batch statistics (and updates the running ones) exactly when
``train``, dropout is on only when ``key`` is a key. The framework's dropout layers are switched
off by the adapter, whatever flag the user's code passes them, so a measurement with dropout off
stays off even where a model ties its dropout to a ``train`` flag.

- linen: the state is every variable collection besides ``params`` (``batch_stats``), made by
  ``module.init`` on one example; a module whose ``__call__`` declares ``train`` receives it.
  Through ``nn.intercept_methods``: an ``nn.Dropout`` call is the identity when dropout is off;
  an ``nn.BatchNorm`` whose ``use_running_average`` is left None gets ``not train``, and one
  that sets it otherwise than ``not train`` raises a ``ValueError`` rather than mix modes.
- nnx: ``nnx.split(module, nnx.Param, ...)``: parameters, then the rest (``BatchStat``, RNG
  counters); ``nnx.BatchNorm.use_running_average`` and ``nnx.Dropout.deterministic`` are set
  on the merged copy, the dropout streams reseeded from ``key``.
- equinox: ``model(x, state, *, key=None) -> (outputs, state)`` on one example, with
  ``eqx.nn.BatchNorm(..., axis_name="batch")``, as ``eqx.nn.make_with_state`` builds it; the
  adapter vmaps it over the batch with ``axis_name="batch"`` (one dropout key per example) and
  sets the ``inference`` fields of ``eqx.nn.BatchNorm`` and ``eqx.nn.Dropout``.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import jax
import jax.numpy as jnp

from ._stateful import StatefulModel

__all__ = [
    "carries_state",
    "declares",
    "equinox_model",
    "linen_dropout_off",
    "linen_model",
    "nnx_model",
    "stateful_model",
]


def declares(fn: Any, name: str) -> bool:
    """Whether ``fn``'s signature has a parameter ``name`` (False when it has no signature)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def as_default_float(state: Any) -> Any:
    """Float leaves of ``state`` in the default float dtype (float64 under x64).

    flax linen and nnx create BatchNorm statistics in float32 whatever the parameters' dtype,
    and their first update promotes them to the dtype of the activations (after rounding the
    momentum to float32). Starting in the default dtype keeps the trainer's carry one type and
    the statistics at full precision from the first step.
    """
    fdt = jnp.result_type(float)

    def cast(a):
        floating = hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)
        return a.astype(fdt) if floating and a.dtype != fdt else a

    return jax.tree.map(cast, state)


def linen_dropout_off() -> Any:
    """A context in which every flax linen ``nn.Dropout`` call is the identity."""
    import flax.linen as nn

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, nn.Dropout):
            return args[0]
        return next_fun(*args, **kwargs)

    return nn.intercept_methods(interceptor)


def linen_model(module: Any, x: Any) -> tuple[StatefulModel, bool]:
    """A flax linen module with variable collections besides ``params`` (module doc), and
    whether it needs the adapter even without them: it calls ``nn.Dropout`` or declares
    ``train`` (a plain ``module.apply`` would have no dropout key, or no ``train``)."""
    import flax.linen as nn

    train_kw = declares(module.__call__, "train")

    dropouts = []  # the Dropout layers the module calls, seen while init is traced

    def switches(train: bool, dropout: bool):
        def interceptor(next_fun, args, kwargs, context):
            if context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            if isinstance(context.module, nn.Dropout):
                dropouts.append(context.module.name)
                if not dropout:
                    return args[0]  # dropout off: the identity (Dropout holds no variables)
            if isinstance(context.module, nn.BatchNorm):
                given = args[1] if len(args) > 1 else kwargs.get("use_running_average")
                fixed = context.module.use_running_average
                if given is None and fixed is None:
                    kwargs = kwargs | {"use_running_average": not train}
                elif bool(fixed if given is None else given) == train:
                    raise ValueError(
                        f"model: a BatchNorm uses {'running' if train else 'batch'} statistics "
                        f"in a train={train} call; let the module's `train` argument decide "
                        "(BatchNorm(use_running_average=not train))"
                    )
            return next_fun(*args, **kwargs)

        return nn.intercept_methods(interceptor)

    def call(variables, inputs, *, train, key, mutable):
        kw = {"train": train} if train_kw else {}
        rngs = {} if key is None else {"dropout": key}
        with switches(train, key is not None):
            return module.apply(variables, inputs, rngs=rngs, mutable=mutable, **kw)

    sample = jnp.asarray(x[:1])

    @jax.jit  # one program: flax's init run op by op compiles each small op (seconds on CPU)
    def init_variables(key):
        kw = {"train": False} if train_kw else {}
        with switches(False, False):
            return module.init(key, sample, **kw)

    variables = init_variables(jax.random.key(0))
    state = as_default_float({k: v for k, v in variables.items() if k != "params"})

    def apply(params, state, inputs, *, train, key=None):
        variables = {"params": params, **state}
        if train and state:
            out, new = call(variables, inputs, train=True, key=key, mutable=list(state))
            return out, {k: new[k] for k in state}
        return call(variables, inputs, train=train, key=key, mutable=False), state

    model = StatefulModel(lambda key: init_variables(key)["params"], apply, state)
    return model, bool(dropouts) or train_kw


def nnx_model(module: Any) -> StatefulModel:
    """A flax nnx module holding state besides its ``nnx.Param`` s (module doc)."""
    from flax import nnx

    graphdef, params, state = nnx.split(module, nnx.Param, ...)
    state = as_default_float(state)

    def apply(params, state, inputs, *, train, key=None):
        m = nnx.merge(graphdef, params, state, copy=True)  # fresh variables in this trace
        dropouts = 0
        for _, sub in nnx.iter_modules(m):
            if isinstance(sub, nnx.BatchNorm):
                sub.use_running_average = not train
            elif isinstance(sub, nnx.Dropout):
                sub.deterministic = key is None
                if key is not None and sub.rngs is not None:
                    sub.rngs.key.set_value(jax.random.fold_in(key, dropouts))
                    sub.rngs.count.set_value(jnp.zeros_like(sub.rngs.count.get_value()))
                    dropouts += 1
        out = m(inputs)
        return out, nnx.split(m, nnx.Param, ...)[2]

    return StatefulModel(lambda key: params, apply, state)


def equinox_model(model: Any, state: Any) -> StatefulModel:
    """An equinox model with its ``eqx.nn.State`` (module doc)."""
    import equinox as eqx

    params, static = eqx.partition(model, eqx.is_inexact_array)
    layers = (eqx.nn.BatchNorm, eqx.nn.Dropout)

    def switched(m, train: bool, dropout: bool):
        def switch(layer):
            if isinstance(layer, eqx.nn.BatchNorm):
                return eqx.tree_at(lambda b: b.inference, layer, not train)
            if isinstance(layer, eqx.nn.Dropout):
                return eqx.tree_at(lambda d: d.inference, layer, not dropout)
            return layer

        return jax.tree.map(switch, m, is_leaf=lambda leaf: isinstance(leaf, layers))

    def apply(params, state, inputs, *, train, key=None):
        m = switched(eqx.combine(params, static), train, key is not None)
        # A fresh copy: equinox marks a State used once as stale, and apply must stay pure.
        state = jax.tree.unflatten(jax.tree.structure(state), jax.tree.leaves(state))
        if key is None:
            one = lambda xi: m(xi, state)  # noqa: E731
            return jax.vmap(one, axis_name="batch", out_axes=(0, None))(inputs)
        keys = jax.random.split(key, inputs.shape[0])
        one = lambda xi, ki: m(xi, state, key=ki)  # noqa: E731
        return jax.vmap(one, axis_name="batch", out_axes=(0, None))(inputs, keys)

    return StatefulModel(lambda key: params, apply, state)


def carries_state(state: Any) -> bool:
    """Whether ``state`` holds anything a run must carry: not empty, and not only the random
    streams of a flax nnx module (its Dropout's ``RngState``), which dropout off never reads."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and isinstance(state, nnx.State):
        state = state.filter(nnx.Not(nnx.RngState))
    return bool(jax.tree.leaves(state))


def stateful_model(obj: Any, x: Any) -> StatefulModel | None:
    """The :class:`StatefulModel` of a framework model with state, or None if it has none.

    A flax linen module without state that calls ``nn.Dropout`` or declares ``train`` gets one
    too (with an empty state): ``train`` and the dropout key are what its calls need.

    ``obj``: a linen Module, an nnx Module, or an ``(equinox Module, eqx.nn.State)`` pair.
    ``x``: a batch of inputs (linen initialises on ``x[:1]``).
    """
    linen, nnx, eqx = (sys.modules.get(m) for m in ("flax.linen", "flax.nnx", "equinox"))
    if linen is not None and isinstance(obj, linen.Module):
        model, flags = linen_model(obj, x)
        return model if model.state or flags else None
    if nnx is not None and isinstance(obj, nnx.Module):
        model = nnx_model(obj)
        return model if jax.tree.leaves(model.state) else None
    if (
        eqx is not None
        and isinstance(obj, tuple | list)
        and len(obj) == 2
        and isinstance(obj[0], eqx.Module)
        and isinstance(obj[1], eqx.nn.State)
    ):
        return equinox_model(*obj)
    return None
