"""Losses on network outputs, averaged over examples, and the ``loss_fn(params, batch)`` adaptor.

The last axis of ``outputs`` holds the ``k`` outputs; all leading axes index examples (a sequence
model's ``(batch, T, vocab)`` logits count ``batch * T`` examples). Targets are either integer class
labels with shape ``outputs.shape[:-1]`` or arrays of the same shape as ``outputs`` (one-hot or real).

Two MSE conventions are in use (see docs/conventions.md); they differ by the factor ``k``:

- ``"per_example"`` (Cohen et al., arXiv 2103.00065): ``L = 1/(2n) sum_i ||f_i - y_i||^2``;
- ``"per_output"`` (Kalra & Barkeshli, arXiv 2302.12250): ``L = 1/(2nk) sum_i ||f_i - y_i||^2``,
  so its Hessian and sharpness are ``k`` times smaller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "LOSSES",
    "MSE_NORMALIZATIONS",
    "accuracy",
    "cross_entropy",
    "make_loss_fn",
    "mse",
    "output_loss",
]

MSE_NORMALIZATIONS = ("per_example", "per_output")
LOSSES = ("mse", "xent")


def _concrete(x: jax.Array) -> bool:
    """Whether ``x`` holds values (eager call) rather than being traced (jit, vmap, grad of it)."""
    return not isinstance(x, jax.core.Tracer)


def _holds(check) -> bool:
    """``bool(check())`` of a check on concrete arrays, evaluated now even inside a trace (an
    eager ``lax.scan`` over a loss that closes over concrete data would stage every jnp op)."""
    with jax.ensure_compile_time_eval():
        return bool(check())


def _holds_array(compute) -> np.ndarray:
    with jax.ensure_compile_time_eval():
        return np.asarray(compute())


def _rows_ok(y: jax.Array, tol: float) -> jax.Array:
    return jnp.all(y >= 0, axis=-1) & (jnp.abs(jnp.sum(y, axis=-1) - 1) <= tol)


def _check_outputs(outputs: jax.Array, name: str, min_k: int = 1) -> None:
    if outputs.ndim < 1 or outputs.shape[-1] < min_k:
        raise ValueError(f"{name}: must have shape (..., k) with k >= {min_k}, got {outputs.shape}")


def _valid_labels(labels: jax.Array, k: int, name: str) -> jax.Array:
    """Per-example mask of labels in ``[0, k)``; raises naming ``name`` when they are concrete."""
    valid = (labels >= 0) & (labels < k)
    if (
        _concrete(labels)
        and labels.size
        and not _holds(lambda: jnp.all((labels >= 0) & (labels < k)))
    ):
        lo, hi = int(np.asarray(labels).min()), int(np.asarray(labels).max())
        raise ValueError(
            f"{name}: class labels must lie in [0, {k}) for outputs with {k} classes, "
            f"got values in [{lo}, {hi}]"
        )
    return valid


def _valid_probabilities(y: jax.Array, name: str) -> jax.Array:
    """Per-example mask of rows that are probability vectors (one-hot, smoothed: >= 0, sum 1)."""
    # Loose enough for smoothed or distilled targets rounded in any float dtype (bfloat16 too).
    tol = max(1e-3, 4 * float(jnp.finfo(y.dtype).eps))
    valid = _rows_ok(y, tol)
    if _concrete(y) and y.size and not _holds(lambda: jnp.all(_rows_ok(y, tol))):
        bad = int(np.sum(~_holds_array(lambda: _rows_ok(y, tol))))
        raise ValueError(
            f"{name}: targets of the outputs' shape must be one-hot or probability rows "
            f"(finite, >= 0, summing to 1); {bad} of {valid.size} rows are not"
        )
    return valid


def _as_float(targets: jax.Array) -> jax.Array:
    """Targets in their own float dtype (ints and bools as the default float) for the checks."""
    return targets if jnp.issubdtype(targets.dtype, jnp.floating) else targets.astype(float)


def _is_labels(outputs: jax.Array, targets: jax.Array) -> bool:
    return jnp.issubdtype(targets.dtype, jnp.integer) and targets.shape == outputs.shape[:-1]


def _check_shape(outputs: jax.Array, targets: jax.Array, name: str) -> None:
    if targets.shape != outputs.shape:
        raise ValueError(
            f"{name}: must be int labels of shape {outputs.shape[:-1]} or an array of the "
            f"outputs' shape {outputs.shape}, got shape {targets.shape} and dtype {targets.dtype}"
        )


def _nan_where(valid: jax.Array | None, per_example: jax.Array) -> jax.Array:
    """``per_example`` with NaN where ``valid`` is False: a bad target never gives a finite loss."""
    return per_example if valid is None else jnp.where(valid, per_example, jnp.nan)


def mse(outputs: jax.Array, targets: jax.Array, *, normalization: str = "per_example") -> jax.Array:
    """Return the mean squared error ``1/(2n) sum_i ||f_i - y_i||^2`` (divided by ``k`` if per_output).

    Args:
      outputs: network outputs, shape ``(..., k)``.
      targets: int labels in ``[0, k)`` of shape ``outputs.shape[:-1]`` (one-hot encoded to ``k``
        classes) or real targets of the outputs' shape.
      normalization: "per_example" (Cohen et al.) or "per_output" (Kalra & Barkeshli).

    Returns:
      A scalar. Under ``jit`` (where nothing can be raised) an int label outside ``[0, k)``
      makes the loss NaN rather than a finite wrong number.

    Raises:
      ValueError: for an unknown ``normalization``, targets of the wrong shape or dtype, and,
        when called eagerly, labels outside ``[0, k)`` or non-finite targets.
    """
    if normalization not in MSE_NORMALIZATIONS:
        raise ValueError(
            f"normalization: must be one of {list(MSE_NORMALIZATIONS)}, got {normalization!r}"
        )
    outputs, targets = jnp.asarray(outputs), jnp.asarray(targets)
    _check_outputs(outputs, "outputs")
    if _is_labels(outputs, targets):
        valid = _valid_labels(targets, outputs.shape[-1], "targets")
        y = jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
    else:
        _check_shape(outputs, targets, "targets")
        if _concrete(targets) and not _holds(lambda: jnp.all(jnp.isfinite(targets))):
            raise ValueError("targets: must be finite, got NaN or inf values")
        valid, y = None, targets.astype(outputs.dtype)
    sq = (outputs - y) ** 2
    if normalization == "per_output":
        return 0.5 * jnp.mean(_nan_where(None if valid is None else valid[..., None], sq))
    return 0.5 * jnp.mean(_nan_where(valid, jnp.sum(sq, axis=-1)))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Return the softmax cross-entropy ``-1/n sum_i sum_c y_ic log softmax(z_i)_c``.

    With int labels the derivatives are written out: the gradient in the logits is
    ``(softmax(z_i) - e_{y_i}) / n`` and the output-space Hessian product (a GGN's ``H_out``)
    ``(p_i * u_i - p_i <p_i, u_i>) / n``, so a large vocabulary costs no logits-sized gather
    transpose and a GGN product keeps no more logits copies than a gradient.

    Args:
      logits: shape ``(..., k)`` with ``k >= 2``.
      labels: int labels in ``[0, k)`` of shape ``logits.shape[:-1]``, or one-hot / probability
        targets (rows >= 0 summing to 1) of the logits' shape.

    Returns:
      A scalar. Under ``jit`` (where nothing can be raised) an example whose label lies outside
      ``[0, k)`` or whose target row is not a probability vector makes the loss NaN (its
      gradient stays finite), so a trainer flags it instead of learning from a wrapped label.

    Raises:
      ValueError: for fewer than two classes, labels of the wrong shape or dtype (float class
        indices), and, when called eagerly, labels outside ``[0, k)`` or target rows that are
        not probability vectors.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_outputs(logits, "logits", min_k=2)
    if _is_labels(logits, labels):
        k = logits.shape[-1]
        valid = _valid_labels(labels, k, "labels")
        return jnp.mean(_nan_where(valid, _label_nll(logits, jnp.clip(labels, 0, k - 1))))
    _check_shape(logits, labels, "labels")
    valid = _valid_probabilities(_as_float(labels), "labels")
    y = labels.astype(logits.dtype)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(_nan_where(valid, jnp.sum(y * logp, axis=-1)))


def _is_label(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The one-hot mask ``c == y_i``: a compare that fuses with its consumer (no scatter)."""
    classes = lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return classes == labels.astype(jnp.int32)[..., None]


@jax.custom_jvp
def _label_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Return the per-example ``logsumexp(z_i) - z_{i, y_i}`` for labels in ``[0, k)``.

    The JVP is written out, ``sum_c (p_i - e_{y_i})_c dz_ic`` with ``p_i = softmax(z_i)``, so a
    gradient is one elementwise product ``(p - e_y) * ct``, and its derivative (the output-space
    Hessian product of a GGN or HVP) is the closed form ``p * (u - <p, u>)`` of :func:`_softmax`.
    Autodiff of ``log_softmax`` and ``take_along_axis`` (whose transpose is a logits-sized
    scatter) kept more copies of the logits: for a transformer with GPT-2's vocabulary on 512
    tokens (benchmarks/bench_models.py, ``--problems vocab``, float32, XLA:CPU) the temporaries
    of a gradient were 4.05 logits arrays (now 3.05), of a GGN product 5.05 (now 2.06), of an
    HVP 6.23 (now 4.23). Derivatives of every order stay exact: the rule is differentiable.
    """
    # the gather costs nothing forwards, and the JVP below means it is never transposed
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


@_label_nll.defjvp
def _label_nll_jvp(primals, tangents):
    logits, labels = primals
    dlogits, _ = tangents  # the labels are integers: their tangent is float0
    residual = _softmax(logits) - _is_label(logits, labels).astype(logits.dtype)
    return _label_nll(logits, labels), jnp.sum(residual * dlogits, axis=-1)


@jax.custom_jvp
def _softmax(logits: jax.Array) -> jax.Array:
    """Return ``softmax`` over the last axis as ``exp(z - logsumexp(z))``, JVP ``p * (u - <p, u>)``.

    ``jax.nn.softmax`` has the same JVP, but its ``e / sum(e)`` form keeps XLA:CPU from fusing
    the GGN's output-space product with the readout matmuls: with it in ``_label_nll``'s rule a
    GGN product kept 5.05 logits arrays of temporaries instead of 2.06, an HVP 6.23 instead of
    4.23 (the transformer above).
    """
    return jnp.exp(logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True))


@_softmax.defjvp
def _softmax_jvp(primals, tangents):
    (logits,), (dlogits,) = primals, tangents
    p = _softmax(logits)
    return p, p * (dlogits - jnp.sum(p * dlogits, axis=-1, keepdims=True))


def accuracy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Return the fraction of examples whose ``argmax`` output equals the label.

    Args:
      outputs: shape ``(..., k)`` with ``k >= 2``.
      labels: int labels in ``[0, k)`` of shape ``outputs.shape[:-1]`` or one-hot (probability)
        targets of the outputs' shape (argmax taken).

    Returns:
      A scalar in ``[0, 1]``; NaN under ``jit`` when a label is out of range or a target row is
      not a probability vector (eagerly these raise).

    Raises:
      ValueError: for a single output, labels of the wrong shape or dtype, and, when called
        eagerly, labels outside ``[0, k)`` or target rows that are not probability vectors.
    """
    outputs, labels = jnp.asarray(outputs), jnp.asarray(labels)
    _check_outputs(outputs, "outputs", min_k=2)
    if _is_labels(outputs, labels):
        valid = _valid_labels(labels, outputs.shape[-1], "labels")
    else:
        _check_shape(outputs, labels, "labels")
        valid = _valid_probabilities(_as_float(labels), "labels")
        labels = jnp.argmax(labels, axis=-1)
    hit = (jnp.argmax(outputs, axis=-1) == labels).astype(outputs.dtype)
    return jnp.mean(_nan_where(valid, hit))


def output_loss(loss: str = "mse", **kw: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Return ``output_loss(outputs, targets) -> scalar`` for a loss name, options bound.

    Args:
      loss: "mse" or "xent".
      **kw: options of the loss (``normalization`` for "mse"; none for "xent").

    Raises:
      ValueError: for an unknown loss or option.
    """
    if loss == "mse":
        unknown = set(kw) - {"normalization"}
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: mse takes only 'normalization'")
        normalization = kw.get("normalization", "per_example")
        if normalization not in MSE_NORMALIZATIONS:
            raise ValueError(
                f"normalization: must be one of {list(MSE_NORMALIZATIONS)}, got {normalization!r}"
            )
        return lambda outputs, targets: mse(outputs, targets, normalization=normalization)
    if loss == "xent":
        if kw:
            raise ValueError(f"{sorted(kw)[0]}: xent takes no options")
        return cross_entropy
    raise ValueError(f"loss: must be one of {list(LOSSES)}, got {loss!r}")


def make_loss_fn(
    apply_fn: Callable[[Any, jax.Array], jax.Array], loss: str = "mse", **kw: Any
) -> Callable[[Any, tuple[jax.Array, jax.Array]], jax.Array]:
    """Return ``loss_fn(params, batch) -> scalar``, the mean loss of ``apply_fn`` on ``batch = (x, y)``.

    Args:
      apply_fn: ``apply(params, x) -> outputs``.
      loss: "mse" or "xent".
      **kw: options of the loss, e.g. ``normalization="per_output"`` for "mse".

    Raises:
      ValueError: for an unknown loss or option (before any tracing).

    Example:
      >>> import jax, jax.numpy as jnp, hessian_lab
      >>> net = hessian_lab.models.mlp(3, 2, depth=1, width=4)
      >>> loss_fn = make_loss_fn(net.apply, "mse", normalization="per_output")
      >>> loss_fn(net.init(jax.random.key(0)), (jnp.ones((5, 3)), jnp.zeros(5, int))).shape
      ()
    """
    out_loss = output_loss(loss, **kw)

    def loss_fn(params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        x, y = batch
        return out_loss(apply_fn(params, x), y)

    return loss_fn
