"""Convolutions in loop bodies written in XLA:CPU's library layout (hessian_lab._conv_layout).

The rewrite must change only the layout: every product equals plain autodiff's (float64, to
rounding) and a dense Hessian, for the layouts, strides, dilations and groups a network uses;
and on CPU the compiled loop must hold only canonical convolutions where plain autodiff's does
not (the reason for the rewrite).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_lab as hl
from hessian_lab import testing
from hessian_lab import tree as tu
from hessian_lab._conv_layout import conv_layouts, in_loop

CPU = jax.default_backend() == "cpu"

# (lhs spec, rhs spec, out spec, input shape, kernel shape, conv keyword arguments)
CASES = {
    "NHWC-HWIO-stride2": (
        ("NHWC", "HWIO", "NHWC"), (3, 5, 5, 2), (3, 3, 2, 3), dict(window_strides=(2, 2)),
    ),
    "NCHW-OIHW-dilated": (
        ("NCHW", "OIHW", "NCHW"), (3, 2, 6, 5), (3, 2, 2, 2), dict(rhs_dilation=(2, 1)),
    ),
    "NWC-WIO-1d": (("NWC", "WIO", "NWC"), (3, 7, 2), (3, 2, 3), dict(padding="VALID")),
    "NHWC-HWIO-groups": (
        ("NHWC", "HWIO", "NHWC"), (3, 4, 4, 4), (3, 3, 2, 4), dict(feature_group_count=2),
    ),
    "NDHWC-DHWIO-3d": (("NDHWC", "DHWIO", "NDHWC"), (2, 3, 3, 3, 1), (2, 2, 2, 1, 2), {}),
}  # fmt: skip


def _problem(case, key):
    dn, xs, ws, kw = CASES[case]
    kx, kw1, kw2 = jax.random.split(key, 3)
    x = jax.random.normal(kx, xs)
    w = {"k": 0.5 * jax.random.normal(kw1, ws), "u": jax.random.normal(kw2, (4,))}

    def loss(p, x):
        kw_all = dict(dict(window_strides=(1,) * (len(xs) - 2), padding="SAME"), **kw)
        h = jax.lax.conv_general_dilated(x, p["k"], dimension_numbers=dn, **kw_all)
        h = jnp.tanh(h).reshape(-1)
        return jnp.sum(jnp.sin(h[:4] * p["u"])) + 0.5 * jnp.mean(h**2)

    return loss, w, x


def _hvp(loss, x):
    def product(p, v):
        return jax.jvp(lambda q: jax.grad(loss)(q, x), (p,), (v,))[1]

    return product


def _looped(product):
    """Two products in a scan: the loop body whose convolutions the rewrite targets."""

    def run(p, v):
        def body(u, _):
            w = product(p, u)
            return jax.tree.map(lambda a, b: 0.5 * a + 0.1 * b, u, w), w

        return jax.lax.scan(body, v, None, length=2)

    return jax.jit(run)


@pytest.mark.parametrize("case", sorted(CASES))
def test_in_loop_products_equal_autodiff_and_the_dense_hessian(case, getkey):
    loss, w, x = _problem(case, getkey())
    v = tu.random_like(getkey(), w)
    plain = _looped(_hvp(loss, x)).lower(w, v).compile()
    fast = _looped(in_loop(_hvp(loss, x))).lower(w, v).compile()
    want, got = plain(w, v), fast(w, v)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)
    H = testing.dense_hessian(loss, w, x)
    first = tu.to_flat(jax.tree.map(lambda a: a[0], got[1]))
    np.testing.assert_allclose(first, H @ tu.to_flat(v), rtol=1e-10, atol=1e-12)
    # the rewrite's purpose: only library-layout convolutions in the compiled loop (XLA expands
    # grouped convolutions after the rewrite, into layouts of its own)
    if CPU and "groups" not in case:
        nd = len(CASES[case][1]) - 2
        sp = "".join(map(str, range(nd)))
        canonical = f"b{sp}f_{sp}io->b{sp}f"
        assert conv_layouts(fast.as_text()) == {canonical}
        plain_layouts = conv_layouts(plain.as_text())
        assert plain_layouts - {canonical}  # autodiff's transposed convolutions, left as they are


def test_gradients_and_vmap_through_in_loop_equal_plain_ones(getkey):
    loss, w, x = _problem("NCHW-OIHW-dilated", getkey())
    xs = jnp.stack([x, 2 * x])

    def total(f):
        def scan_loss(p):
            def body(c, xi):
                return c + f(p, xi), None

            return jax.lax.scan(body, 0.0, xs)[0]

        return jax.jit(jax.grad(scan_loss))(w)

    for a, b in zip(
        jax.tree.leaves(total(loss)), jax.tree.leaves(total(in_loop(loss))), strict=True
    ):
        np.testing.assert_allclose(b, a, rtol=1e-12)
    batched = jax.jit(jax.vmap(in_loop(loss), in_axes=(None, 0)))(w, xs)
    np.testing.assert_allclose(batched, [loss(w, x), loss(w, 2 * x)], rtol=1e-12)


def test_in_loop_is_the_function_itself_outside_a_trace_and_idempotent():
    calls = []

    def f(a):
        calls.append(type(a))
        return 2 * a

    g = in_loop(f)
    assert in_loop(g) is g
    np.testing.assert_array_equal(g(jnp.ones(3)), 2 * np.ones(3))  # concrete: called as is
    assert calls == [type(jnp.ones(3))]
    np.testing.assert_array_equal(jax.jit(g)(jnp.ones(3)), 2 * np.ones(3))


def test_lanczos_of_a_chunked_cnn_hessian_equals_dense_eigh_with_fast_convolutions(tiny_cnn):
    loss_fn, params, (x, y) = tiny_cnn(depth=1)

    def top(p):
        op = hl.full_data_hvp(loss_fn, p, (x, y), chunk_size=4)
        v0 = tu.random_like(jax.random.key(1), p)
        return hl.top_eigs(op, v0, k=2, num_iters=25).values

    want = np.linalg.eigvalsh(testing.dense_hessian(loss_fn, params, (x, y)))[::-1][:2]
    compiled = jax.jit(top).lower(params).compile()
    np.testing.assert_allclose(compiled(params), want, rtol=1e-9)
    if CPU:  # (XLA swaps the operands of convolutions whose window exceeds the image: 8x8)
        assert conv_layouts(compiled.as_text()) == {"b01f_01io->b01f"}
