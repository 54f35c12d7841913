"""The peer panel's problems: the same network, weights, data and loss in JAX and in PyTorch.

Each ``make_<name>(n, seed)`` returns a :class:`Problem`. Weights are drawn in JAX and copied
into the torch module, stored in torch's layouts in both (``(out, in)`` dense weights, ``OIHW``
convolution kernels, ``NCHW`` images), so both frameworks compute the same function with the
same arithmetic layout.

- ``random_mlp``: MLP 3072-64-64-64-64-10, tanh, per-example MSE ``0.5 mean_i ||f - y||^2`` on
  random Gaussian inputs and targets (the problem docs/peers.md first reported; its top
  eigenvalues are unusually close, lambda_2 / lambda_1 = 0.96).
- ``mnist_mlp``: MLP 784-512-512-10, ReLU, cross-entropy, the first ``n`` MNIST test images.
- ``mnist_cnn``: a CNN, conv 3x3 (16) - conv 3x3 stride 2 (32) - conv 3x3 stride 2 (32) -
  dense 10, ReLU, cross-entropy, the first ``n`` MNIST test images.

MNIST is read from ``--mnist DIR`` (IDX files); the MNIST problems are skipped without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch

import hessian_lab as hl


class Problem(NamedTuple):
    name: str
    description: str
    params: Any  # JAX pytree (float32)
    loss: Callable  # loss(params, (x, y)) -> mean loss over the batch
    data: tuple  # (x, y) JAX arrays
    model: torch.nn.Module  # the same function in torch, eval mode
    criterion: Callable  # criterion(output, target) -> the same mean loss
    torch_data: tuple  # (x, y) torch tensors
    curvlinops_loss: torch.nn.Module  # a torch loss module curvlinops accepts
    curvlinops_scale: float  # our loss = scale * curvlinops_loss (MSELoss averages outputs too)


def _dense(key, m, n):
    """``(out, in)`` weight ``N(0, 1/m)`` and zero bias (PyTorch's layout)."""
    # float32 explicitly: under jax_enable_x64 (the reference) a numpy scalar would promote to
    # float64 and the JAX side would run in double precision against torch's single
    w = (jax.random.normal(key, (n, m), jnp.float32) / np.sqrt(m)).astype(jnp.float32)
    return {"w": w, "b": jnp.zeros((n,), jnp.float32)}


def _conv(key, cin, cout, size=3):
    """``OIHW`` kernel ``N(0, 1/fan_in)`` and zero bias (PyTorch's layout)."""
    fan_in = cin * size * size
    w = jax.random.normal(key, (cout, cin, size, size), jnp.float32) / np.sqrt(fan_in)
    w = w.astype(jnp.float32)  # as in _dense
    return {"w": w, "b": jnp.zeros((cout,), jnp.float32)}


def _copy(module, layer):
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(np.array(layer["w"])))
        module.bias.copy_(torch.from_numpy(np.array(layer["b"])))
    return module


def _mlp_forward(phi):
    def forward(params, x):
        h = x
        for i, layer in enumerate(params):
            h = h @ layer["w"].T + layer["b"]
            if i < len(params) - 1:
                h = phi(h)
        return h

    return forward


def _torch_mlp(params, act):
    layers = []
    for i, layer in enumerate(params):
        n_out, n_in = layer["w"].shape
        layers.append(_copy(torch.nn.Linear(n_in, n_out), layer))
        if i < len(params) - 1:
            layers.append(act())
    return torch.nn.Sequential(*layers).eval()


def _cross_entropy(forward):
    def loss(params, batch):
        x, y = batch
        logits = forward(params, x)
        return jnp.mean(
            jax.nn.logsumexp(logits, axis=-1)
            - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
        )

    return loss


def _mnist(path, n, flatten):
    ds = hl.data.mnist(path, split="test", n=n, flatten=flatten, one_hot=False)
    x = np.asarray(ds.x, np.float32)
    if not flatten:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # NHWC -> NCHW, torch's layout
    return x, np.asarray(ds.y, np.int64)


def make_random_mlp(n, seed, mnist=None):
    sizes = (3072, 64, 64, 64, 64, 10)
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    params = [
        _dense(k, m, o) for k, m, o in zip(jax.random.split(kp, 5), sizes, sizes[1:], strict=False)
    ]
    x = jax.random.normal(kx, (n, sizes[0]), jnp.float32)
    y = jax.random.normal(ky, (n, sizes[-1]), jnp.float32)
    forward = _mlp_forward(jnp.tanh)

    def loss(p, batch):
        return 0.5 * jnp.mean(jnp.sum((forward(p, batch[0]) - batch[1]) ** 2, axis=-1))

    def criterion(out, target):
        return 0.5 * ((out - target) ** 2).sum(dim=-1).mean()

    return Problem(
        "random_mlp",
        f"MLP 3072-64x4-10 tanh, MSE, n={n} random Gaussian inputs and targets",
        params,
        loss,
        (x, y),
        _torch_mlp(params, torch.nn.Tanh),
        criterion,
        (torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))),
        torch.nn.MSELoss(reduction="mean"),
        0.5 * sizes[-1],  # MSELoss(mean) also averages over the 10 outputs
    )


def make_mnist_mlp(n, seed, mnist):
    sizes = (784, 512, 512, 10)
    params = [
        _dense(k, m, o)
        for k, m, o in zip(
            jax.random.split(jax.random.key(seed), 3), sizes, sizes[1:], strict=False
        )
    ]
    x, y = _mnist(mnist, n, flatten=True)
    return Problem(
        "mnist_mlp",
        f"MLP 784-512-512-10 ReLU, cross-entropy, first {n} MNIST test images",
        params,
        _cross_entropy(_mlp_forward(jax.nn.relu)),
        (jnp.asarray(x), jnp.asarray(y, jnp.int32)),
        _torch_mlp(params, torch.nn.ReLU),
        torch.nn.CrossEntropyLoss(),
        (torch.from_numpy(x), torch.from_numpy(y)),
        torch.nn.CrossEntropyLoss(reduction="mean"),
        1.0,
    )


_CNN = ((1, 16, 1), (16, 32, 2), (32, 32, 2))  # (in, out, stride) of the 3x3 convolutions


def _cnn_forward(params, x):
    h = x
    for layer, (_, _, stride) in zip(params[:-1], _CNN, strict=True):
        h = jax.lax.conv_general_dilated(
            h,
            layer["w"],
            (stride, stride),
            ((1, 1), (1, 1)),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        )
        h = jax.nn.relu(h + layer["b"][None, :, None, None])
    h = h.reshape(h.shape[0], -1)  # NCHW flattening, as torch.nn.Flatten does
    return h @ params[-1]["w"].T + params[-1]["b"]


def make_mnist_cnn(n, seed, mnist):
    keys = jax.random.split(jax.random.key(seed), len(_CNN) + 1)
    params = [_conv(k, cin, cout) for k, (cin, cout, _) in zip(keys, _CNN, strict=False)]
    params.append(_dense(keys[-1], 32 * 7 * 7, 10))
    x, y = _mnist(mnist, n, flatten=False)
    layers = []
    for layer, (cin, cout, stride) in zip(params[:-1], _CNN, strict=True):
        layers += [_copy(torch.nn.Conv2d(cin, cout, 3, stride, 1), layer), torch.nn.ReLU()]
    layers += [torch.nn.Flatten(), _copy(torch.nn.Linear(32 * 7 * 7, 10), params[-1])]
    return Problem(
        "mnist_cnn",
        f"CNN conv16-conv32/2-conv32/2-dense10 ReLU, cross-entropy, first {n} MNIST test images",
        params,
        _cross_entropy(_cnn_forward),
        (jnp.asarray(x), jnp.asarray(y, jnp.int32)),
        torch.nn.Sequential(*layers).eval(),
        torch.nn.CrossEntropyLoss(),
        (torch.from_numpy(x), torch.from_numpy(y)),
        torch.nn.CrossEntropyLoss(reduction="mean"),
        1.0,
    )


PANEL = {"random_mlp": make_random_mlp, "mnist_mlp": make_mnist_mlp, "mnist_cnn": make_mnist_cnn}
