"""The built-in full-batch problems of the studies: an MLP or a CNN on digits, MNIST or CIFAR-10.

:func:`make_problem` (re-exported by :mod:`hessian_lab.studies.problems`) builds the network,
the MSE loss and the data; with BatchNorm the problem holds a StatefulLoss and the initial
state. :func:`pool_images` downsamples images by averaging.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from hessian_lab import data as hd
from hessian_lab import losses, models
from hessian_lab import stateful_loss as _stateful_loss
from hessian_lab.problem import Problem

__all__ = ["ARCHS", "ARCH_DOC", "make_problem", "pool_images"]

ARCHS = ("mlp", "cnn", "cnn-bn", "cnn-ln", "resnet-bn")
ARCH_DOC = "network: mlp, cnn, cnn-bn (BatchNorm), cnn-ln (LayerNorm) or resnet-bn"
_NORMS = {"cnn": "none", "cnn-bn": "batchnorm", "cnn-ln": "layernorm", "resnet-bn": "batchnorm"}


def make_problem(
    *,
    n_train: int,
    depth: int,
    width: int,
    activation: str = "tanh",
    param: str = "sp",
    normalization: str = "per_example",
    cifar_path: str | None = None,
    center: bool = True,
    data: str = "digits",
    arch: str = "mlp",
    downsample: int = 1,
) -> Problem:
    """Build the full-batch MSE problem: an MLP or a CNN on digits, a data spec or CIFAR-10.

    Inputs are scaled to [0, 1] and (``center``) centred per feature over the kept examples, as
    Cohen et al. do for cifar10-5k; targets are one-hot. The CNNs (``arch`` other than "mlp")
    take the images NHWC, first average-pooled by ``downsample`` (MNIST's 28 x 28 become 14 x 14
    with 2). ``"cnn-bn"`` and ``"resnet-bn"`` have BatchNorm: the problem then holds a
    :class:`~hessian_lab.StatefulModel`, a :class:`~hessian_lab.StatefulLoss` (train mode: the
    Hessian measured is that of the loss GD descends, with the full batch's statistics) and the
    initial ``state``. Nothing is cached: build the problem once per study run and hand it (and
    the steps compiled for it) around.

    Args:
      n_train: number of leading training examples kept (digits has 1797).
      depth, width, activation, param: passed to ``hessian_lab.models.mlp`` (hidden layers) or
        ``cnn`` (conv layers); ``resnet`` takes ``depth`` residual blocks and only "sp".
      normalization: "per_example" (``1/(2n) sum ||f - y||^2``, Cohen et al.) or "per_output"
        (also divided by the 10 outputs, Kalra & Barkeshli).
      cifar_path: a ``cifar-10-batches-py`` directory (or its parent); None uses ``data``.
      center: subtract the per-feature mean.
      data: a data spec (``hessian_lab.data.parse_data``): labels one-hot.
      arch: one of :data:`ARCHS`.
      downsample: average-pool the images by this factor (CNNs only; 1 keeps them).

    Raises:
      ValueError: bad sizes or options (from the data and model builders), naming them.
      FileNotFoundError: ``cifar_path`` does not hold CIFAR-10.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch: must be one of {list(ARCHS)}, got {arch!r}")
    if not (isinstance(downsample, int) and not isinstance(downsample, bool) and downsample >= 1):
        raise ValueError(f"downsample: must be an int >= 1, got {downsample!r}")
    if arch == "mlp" and downsample != 1:
        raise ValueError(f"downsample: only the CNN archs pool their images, got {downsample}")
    if arch == "resnet-bn" and param != "sp":
        raise ValueError(f"param: resnet-bn has only the standard parameterisation, got {param!r}")
    dtype = jnp.result_type(float)
    flat = arch == "mlp"
    if cifar_path is None and hd.parse_data(data).kind != "digits":
        spec = hd.parse_data(data)
        raw = hd.load_data(spec, n=n_train)
        k = 10 if spec.kind in ("mnist", "cifar10") else int(raw.y.max()) + 1
        y = hd.to_one_hot(raw.y, k) if raw.y.ndim == 1 else raw.y
        ds = hd.Dataset(raw.x.reshape(len(raw.x), -1) if flat else raw.x, y)
        name = spec.kind + (" TEST split" if spec.split == "test" else "")
    elif cifar_path is None:
        ds, name = hd.digits(n=n_train, flatten=flat), "digits"
    else:
        ds, name = hd.cifar10(cifar_path, n=n_train, flatten=flat), "cifar10"
    if downsample > 1:
        ds = hd.Dataset(pool_images(ds.x, downsample), ds.y)
    ds = hd.preprocess(ds, center=center, dtype=np.float64)
    kw = dict(depth=depth, width=width, activation=activation)
    out = ds.y.shape[1]
    if flat:
        model = models.mlp(ds.x.shape[1], out, **kw, param=param)
    elif arch == "resnet-bn":
        model = models.resnet(ds.x.shape[1:], out, **kw)
    else:
        model = models.cnn(ds.x.shape[1:], out, **kw, param=param, norm=_NORMS[arch])
    data = (jnp.asarray(ds.x, dtype), jnp.asarray(ds.y, dtype))
    what = "mlp" if flat else f"{arch} on {'x'.join(map(str, ds.x.shape[1:3]))} images"
    desc = (
        f"{name} (first {ds.x.shape[0]}), {what} {depth}x{width} {activation} ({param}), "
        f"MSE {normalization}"
    )
    if _NORMS.get(arch) == "batchnorm":
        out_loss = losses.output_loss("mse", normalization=normalization)
        return Problem(model, _stateful_loss(model.apply, out_loss), data, desc, model.state)
    loss_fn = losses.make_loss_fn(model.apply, "mse", normalization=normalization)
    return Problem(model, loss_fn, data, desc)


def pool_images(x: np.ndarray, k: int) -> np.ndarray:
    """Average-pool NHWC images over k x k blocks (trailing rows/columns that do not fit dropped)."""
    n, h, w, c = x.shape
    if k > min(h, w):
        raise ValueError(f"downsample: {k} exceeds the image size {h}x{w}")
    x = np.asarray(x, np.float64)[:, : h - h % k, : w - w % k]
    return x.reshape(n, h // k, k, w // k, k, c).mean(axis=(2, 4))


def sequence_transformer(c) -> models.Model:
    """``models.transformer`` of a config with ``vocab``, ``context``, ``d_model``, ``num_layers``
    and ``num_heads`` fields (pre-LayerNorm, decoder-only)."""
    return models.transformer(
        c.vocab,
        context=c.context,
        d_model=c.d_model,
        num_layers=c.num_layers,
        num_heads=c.num_heads,
    )


def token_sequences(task: str, seed: int, n: int, *, vocab: int, context: int) -> hd.Dataset:
    """``n`` next-token sequences of ``context`` tokens from ``seed``: random walks on a random
    out-degree-3 graph of ``vocab`` nodes (``"walks"``) or full-period linear congruential
    sequences modulo ``vocab`` (``"lcg"``)."""
    if task == "lcg":
        return hd.lcg_sequences(seed, n, modulus=vocab, length=context)
    return hd.graph_walks(seed, n, num_nodes=vocab, length=context)
