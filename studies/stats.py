"""Statistics every study shares, on per-step arrays as the trainer records them.

* **thresholds** -- :func:`stability_threshold`: the critical ``eta * lambda`` of a quadratic under
  GD (2), heavy-ball momentum (``2 + 2 beta``) and Nesterov momentum in optax's form
  (``(2 + 2 beta) / (1 + 2 beta)``); derivation in ``docs/studies/momentum.md``.
* **reaching a threshold** -- :func:`first_reach` (the first step a curve reaches it),
  :func:`rose_before` (progressive sharpening before it), :func:`median_after` (median from a step
  on), :func:`plateau` (median over the last fraction of a run).
* **the loss at the edge of stability** -- :func:`loss_oscillation`, and :func:`eos_stats`, which
  bundles the edge-of-stability statistics of one run.
* **averages that ignore stopped runs** -- :func:`nanmedian_or_nan`, :func:`nanmean`.
* **critical values of a sweep** -- :func:`max_ratio` (how far a curve rose above its start) and
  :func:`critical_c` (the first grid value with an event, e.g. ``c_loss``, ``c_max``).

Per-step arrays hold NaN where a callback did not run (off cadence) or after a run stopped.

Example:
  >>> import numpy as np
  >>> from hessian_lab.studies import stats
  >>> stats.stability_threshold("momentum", 0.9)
  3.8
  >>> lam = np.array([1.0, np.nan, 1.5, np.nan, 2.1, np.nan, 2.0, np.nan, 2.2])
  >>> stats.first_reach(lam, 2.0), stats.rose_before(lam, 4), stats.median_after(lam, 4)
  (4, True, 2.1)
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

__all__ = [
    "THRESHOLD_OPTIMIZERS",
    "critical_c",
    "eos_stats",
    "first_reach",
    "loss_oscillation",
    "max_ratio",
    "median_after",
    "nanmean",
    "nanmedian_or_nan",
    "plateau",
    "rose_before",
    "stability_threshold",
    "t_interval",
]

THRESHOLD_OPTIMIZERS = ("gd", "momentum", "nesterov")


def stability_threshold(optimizer: str, momentum: float = 0.0) -> float:
    """Return the critical ``eta * lambda`` of GD-type updates on a quadratic ``lambda x^2 / 2``.

    * ``"gd"``: 2.
    * ``"momentum"`` (optax heavy ball: ``v <- beta v + g``, ``theta <- theta - eta v``):
      ``2 + 2 beta``.
    * ``"nesterov"`` (optax: ``v <- beta v + g``, ``theta <- theta - eta (beta v + g)``):
      ``(2 + 2 beta) / (1 + 2 beta)``.

    Derivation (companion matrix, characteristic polynomial, Jury conditions) in
    ``docs/studies/momentum.md``.

    Raises:
      ValueError: unknown optimizer, or ``momentum`` outside [0, 1).
    """
    if optimizer not in THRESHOLD_OPTIMIZERS:
        raise ValueError(
            f"optimizer: must be one of {', '.join(THRESHOLD_OPTIMIZERS)}, got {optimizer!r}"
        )
    b = float(momentum)
    if not 0.0 <= b < 1.0:
        raise ValueError(f"momentum: must lie in [0, 1), got {momentum!r}")
    if optimizer == "gd":
        return 2.0
    if optimizer == "momentum":
        return 2.0 + 2.0 * b
    return (2.0 + 2.0 * b) / (1.0 + 2.0 * b)


def first_reach(values: np.ndarray, threshold: float, *, frac: float = 1.0) -> int:
    """Return the first step t with ``values[t] >= frac * threshold`` (NaN entries skipped), or -1.

    ``values`` is a per-step array as the trainer records it, e.g. ``metrics["sharpness"]``.
    """
    v = np.asarray(values, float)
    hit = np.flatnonzero(np.isfinite(v) & (v >= frac * threshold))
    return int(hit[0]) if hit.size else -1


def rose_before(values: np.ndarray, step: int, *, factor: float = 1.1) -> bool:
    """Return whether ``values`` rose by ``factor`` from its minimum before ``step`` to ``step``.

    True iff ``values[step] >= factor * min(values[:step])`` (finite entries only): the sharpness
    climbed to the threshold (progressive sharpening) rather than starting at it. False if
    ``step <= 0``, ``values[step]`` is NaN or nothing was measured before ``step``.
    """
    v = np.asarray(values, float)
    if step <= 0 or not np.isfinite(v[step]):
        return False
    before = v[:step][np.isfinite(v[:step])]
    return bool(before.size and v[step] >= factor * before.min())


def median_after(values: np.ndarray, step: int) -> float:
    """Median of the finite entries of ``values`` from ``step`` on (NaN if none or ``step < 0``)."""
    if step < 0:
        return float("nan")
    v = np.asarray(values, float)[step:]
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def loss_oscillation(loss: np.ndarray, start: int, *, long_window: int, short_window: int = 20):
    """Return ``(long_decrease, short_nonmonotone)`` of a loss curve from step ``start`` on.

    * ``long_decrease``: split into blocks of ``long_window`` steps; the last block's mean loss is
      below the first's and at least 3/4 of successive block means decrease (the loss still
      falls over long windows, spikes allowed).
    * ``short_nonmonotone``: at least 1/4 of the windows of ``short_window`` steps contain a rise
      ``L_{t+1} > L_t`` (GD below its stability limit on a smooth loss has none).

    NaN entries (a diverged run), ``start < 0`` or fewer than two blocks make both False.
    """
    x = np.asarray(loss, float)[max(start, 0) :]
    if start < 0 or x.size < 2 * long_window or not np.all(np.isfinite(x)):
        return False, False
    nb = x.size // long_window
    means = x[: nb * long_window].reshape(nb, long_window).mean(axis=1)
    long_decrease = bool(means[-1] < means[0] and np.mean(np.diff(means) < 0) >= 0.75)
    ns = x.size // short_window
    rises = np.diff(x[: ns * short_window].reshape(ns, short_window), axis=1) > 0
    short_nonmonotone = bool(np.mean(np.any(rises, axis=1)) >= 0.25)
    return long_decrease, short_nonmonotone


def eos_stats(
    sharpness: np.ndarray,
    loss: np.ndarray,
    eta: float,
    critical: float,
    *,
    long_window: int,
    short_window: int = 20,
) -> dict[str, float | int | bool]:
    """Edge-of-stability statistics of one run.

    Args:
      sharpness: per-step sharpness (NaN off cadence), as recorded by ``callbacks.sharpness``.
      loss: per-step full-batch training loss.
      eta: the learning rate.
      critical: the critical ``eta * lambda`` (:func:`stability_threshold`), e.g. 2 for GD.
      long_window, short_window: see :func:`loss_oscillation`.

    Returns:
      ``reach_step`` (first step with ``lambda >= critical / eta``, -1 if never),
      ``rose`` (progressive sharpening before it, :func:`rose_before`),
      ``median_x_lr`` (median of ``eta * lambda`` from ``reach_step`` on),
      ``median_ratio`` (that divided by ``critical``), ``long_decrease``, ``short_nonmonotone``,
      ``sharpness0`` (first measured sharpness).
    """
    lam = np.asarray(sharpness, float)
    t = first_reach(lam, critical / eta)
    med = median_after(eta * lam, t)
    long_dec, short_nm = loss_oscillation(
        loss, t, long_window=long_window, short_window=short_window
    )
    fin = lam[np.isfinite(lam)]
    return {
        "reach_step": t,
        "rose": rose_before(lam, t),
        "median_x_lr": med,
        "median_ratio": med / critical,
        "long_decrease": long_dec,
        "short_nonmonotone": short_nm,
        "sharpness0": float(fin[0]) if fin.size else float("nan"),
    }


def plateau(values: np.ndarray, *, last: float = 0.5) -> float:
    """Median of the finite entries in the last ``last`` fraction of ``values`` (NaN if none)."""
    v = np.asarray(values, float)
    v = v[int(np.floor((1.0 - last) * v.size)) :]
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def nanmedian_or_nan(values) -> float:
    """Median of the finite entries of ``values``; NaN (not a warning) when there are none."""
    v = np.asarray(values, float).ravel()
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def nanmean(values, axis=None) -> np.ndarray:
    """Mean of the finite entries along ``axis``; NaN (not a warning) where there are none."""
    a = np.asarray(values, float)
    ok = np.isfinite(a)
    n = ok.sum(axis=axis)
    return np.where(n > 0, np.where(ok, a, 0.0).sum(axis=axis) / np.maximum(n, 1), np.nan)


def max_ratio(values, ref) -> np.ndarray:
    """``max_{t >= 1} values[..., t] / ref`` over the last axis, NaN entries skipped (NaN if none).

    E.g. ``max_ratio(loss, loss[..., 0]) > 1`` is a loss catapult: the loss rose above ``L_0``.
    """
    v = np.asarray(values, float)[..., 1:] / np.asarray(ref, float)[..., None]
    out = np.where(np.isfinite(v), v, -np.inf).max(axis=-1)
    return np.where(np.isfinite(out), out, np.nan)


def critical_c(cs, event, *, largest_before: bool = False) -> np.ndarray:
    """Per seed, the grid value of ``c`` where ``event`` first happens; shape ``event[..., 0, :]``.

    ``event``: (..., C, S) bool over the grid ``cs`` (C,) and S seeds. Returns the smallest ``c``
    with the event (NaN if none), or with ``largest_before`` the largest ``c`` below the first
    event: ``c_max`` from the divergence mask (the largest grid ``c``, a lower bound, if the event
    never happens; NaN if it happens at the first ``c``).

    Example:
      >>> ev = np.array([[False], [True], [True]])  # c = 1, 2, 4; one seed
      >>> critical_c([1.0, 2.0, 4.0], ev), critical_c([1.0, 2.0, 4.0], ev, largest_before=True)
      (array([2.]), array([1.]))
    """
    cs, event = np.asarray(cs, float), np.asarray(event, bool)
    hit, first = event.any(axis=-2), np.argmax(event, axis=-2)
    if not largest_before:
        return np.where(hit, cs[first], np.nan)
    before = np.where(first > 0, cs[np.maximum(first - 1, 0)], np.nan)
    return np.where(hit, before, cs[-1])


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the Student-t interval of the mean of the finite ``values``.

    NaN for no value; ``lo = hi = mean`` for one value (no spread to estimate).
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not v.size:
        return (math.nan,) * 3
    m = float(v.mean())
    if v.size == 1:
        return m, m, m
    half = float(sps.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - half, m + half
