"""Convolutions written as matrix products (hl.convs_as_matmuls).

The rewrite must compute the same function: the value, the gradient and Hessian-vector products
equal the library convolution's (float64, to rounding) and a dense Hessian, for the layouts,
strides, dilations and paddings networks use; the convolutions it cannot compute (grouped,
transposed) are left in place and still give the same numbers; and the rewritten jaxpr holds
no convolution where it claims to have rewritten them all (the reason for the rewrite).
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_lab as hl
from hessian_lab import testing
from hessian_lab import tree as tu

# (dimension numbers, input shape, kernel shape, conv keyword arguments, rewritten)
CASES = {
    "NCHW-OIHW-same": (("NCHW", "OIHW", "NCHW"), (3, 2, 6, 5), (3, 2, 3, 3), {}, True),
    "NHWC-HWIO-stride2-valid": (
        ("NHWC", "HWIO", "NHWC"), (2, 7, 6, 2), (3, 2, 2, 3),
        dict(window_strides=(2, 2), padding="VALID"), True,
    ),
    "NCHW-OIHW-dilated-asymmetric": (
        ("NCHW", "OIHW", "NCHW"), (2, 2, 7, 6), (2, 2, 2, 3),
        dict(rhs_dilation=(2, 1), padding=((2, 0), (1, 2))), True,
    ),
    "NHWC-OIHW-cropping": (
        ("NHWC", "OIHW", "NHWC"), (2, 6, 6, 1), (2, 1, 2, 2),
        dict(padding=((-1, 1), (0, -1))), True,
    ),
    "NWC-WIO-1d-stride3": (
        ("NWC", "WIO", "NWC"), (3, 11, 2), (4, 2, 3), dict(window_strides=(3,)), True,
    ),
    "CHWN-HWIO-odd-layout": (("CHWN", "IOHW", "WCNH"), (2, 5, 4, 3), (2, 3, 3, 2), {}, True),
    "NDHWC-DHWIO-3d": (("NDHWC", "DHWIO", "NDHWC"), (2, 3, 4, 3, 1), (2, 2, 2, 1, 2), {}, True),
    "NHWC-1x1": (("NHWC", "HWIO", "NHWC"), (2, 3, 3, 4), (1, 1, 4, 2), {}, True),
    "NHWC-groups-left-as-is": (
        ("NHWC", "HWIO", "NHWC"), (2, 4, 4, 4), (3, 3, 2, 4), dict(feature_group_count=2), False,
    ),
    "NHWC-transposed-left-as-is": (
        ("NHWC", "HWIO", "NHWC"), (2, 3, 3, 2), (3, 3, 2, 2), dict(lhs_dilation=(2, 2), padding=((1, 1), (2, 0))), False,
    ),
}  # fmt: skip


def _problem(case, key):
    dn, xs, ws, kw, _ = CASES[case]
    kx, kk, ku = jax.random.split(key, 3)
    x = jax.random.normal(kx, xs)
    w = {"k": 0.5 * jax.random.normal(kk, ws), "u": jax.random.normal(ku, (4,))}
    nd = len(xs) - 2

    def loss(p, x):
        kw_all = dict(dict(window_strides=(1,) * nd, padding="SAME"), **kw)
        h = jax.lax.conv_general_dilated(x, p["k"], dimension_numbers=dn, **kw_all)
        h = jnp.tanh(h).reshape(-1)
        return jnp.sum(jnp.sin(h[:4] * p["u"])) + 0.5 * jnp.mean(h**2)

    return loss, w, x


def _convs(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args)
    return str(jaxpr).count("conv_general_dilated")


def _dot_operand_ranks(fn, *args):
    """The operand ranks of every ``dot_general`` ``fn`` computes, nested jaxprs included."""
    ranks = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                ranks.update(v.aval.ndim for v in eqn.invars)
            for value in eqn.params.values():
                for sub in value if isinstance(value, tuple) else (value,):
                    if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                        walk(getattr(sub, "jaxpr", sub))

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return ranks


@pytest.mark.parametrize("case", sorted(CASES))
def test_value_gradient_and_hvp_equal_the_library_convolution_and_the_dense_hessian(case, getkey):
    loss, w, x = _problem(case, getkey())
    fast = hl.convs_as_matmuls(loss)
    v = tu.random_like(getkey(), w)
    np.testing.assert_allclose(fast(w, x), loss(w, x), rtol=1e-12)
    for a, b in zip(
        jax.tree.leaves(jax.grad(loss)(w, x)), jax.tree.leaves(jax.grad(fast)(w, x)), strict=True
    ):
        np.testing.assert_allclose(b, a, rtol=1e-11, atol=1e-13)
    hvp = jax.jit(lambda p, v: jax.jvp(lambda q: jax.grad(fast)(q, x), (p,), (v,))[1])
    H = testing.dense_hessian(loss, w, x)  # of the library convolution
    np.testing.assert_allclose(tu.to_flat(hvp(w, v)), H @ tu.to_flat(v), rtol=1e-10, atol=1e-12)
    assert _convs(loss, w, x) == 1
    rewritten = CASES[case][-1]
    # and the derivatives hold no convolution either: autodiff saw only slices and products
    assert _convs(jax.grad(fast), w, x) == (0 if rewritten else 2)
    assert _convs(fast, w, x) == (0 if rewritten else 1)
    if rewritten:  # one 2-D product per convolution, so the kernel's gradient is one 2-D product
        assert _dot_operand_ranks(jax.grad(fast), w, x) == {2}


def test_jit_vmap_and_nested_jit_convolutions_are_rewritten(getkey):
    loss, w, x = _problem("NCHW-OIHW-same", getkey())
    inner = jax.jit(loss)  # a conv behind a jit inside the function, as libraries have

    def outer(p, x):
        return inner(p, x) + 0.1 * loss(p, 2 * x)

    fast = hl.convs_as_matmuls(outer)
    assert _convs(outer, w, x) == 2 and _convs(fast, w, x) == 0
    xs = jnp.stack([x, -x, 0.5 * x])
    got = jax.jit(jax.vmap(fast, in_axes=(None, 0)))(w, xs)
    np.testing.assert_allclose(got, [outer(w, xi) for xi in xs], rtol=1e-12)


def test_top_eigenvalues_of_a_cnn_through_the_chunked_operator_equal_dense_eigh(tiny_cnn):
    loss_fn, params, (x, y) = tiny_cnn(depth=2)

    fast = hl.convs_as_matmuls(loss_fn)
    assert _convs(loss_fn, params, (x, y)) == 2 and _convs(fast, params, (x, y)) == 0
    want = np.linalg.eigvalsh(testing.dense_hessian(loss_fn, params, (x, y)))[::-1][:2]
    v0 = tu.random_like(jax.random.key(1), params)
    for linearize in (False, True):

        def top(v, linearize=linearize):
            op = hl.full_data_hvp(fast, params, (x, y), chunk_size=4, linearize=linearize)
            return hl.top_eigs(op, v, k=2, num_iters=30).values

        got = jax.jit(top)(v0)
        np.testing.assert_allclose(got, want, rtol=1e-9)


def test_float32_agrees_to_rounding_and_a_non_callable_is_refused(getkey):
    loss, w, x = _problem("NHWC-HWIO-stride2-valid", getkey())
    w32, x32 = jax.tree.map(lambda a: a.astype(jnp.float32), (w, x))
    g64 = tu.to_flat(jax.grad(loss)(w, x))
    g32 = tu.to_flat(jax.grad(hl.convs_as_matmuls(loss))(w32, x32))
    assert g32.dtype == jnp.float32
    np.testing.assert_allclose(g32, g64, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="convs_as_matmuls: fn must be callable"):
        hl.convs_as_matmuls("loss")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_batchnorm_cnn_keeps_its_state_handling_and_its_dense_top_eigenvalue(mode, getkey):
    net = hl.models.cnn((6, 6, 2), 3, depth=2, width=2, activation="tanh", norm="batchnorm")
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (5, 6, 6, 2))
    y = jax.random.normal(getkey(), (5, 3))
    _, state = net.apply(params, net.state, 2 * x + 1, train=True)  # running stats moved

    def mse(out, t):
        return 0.5 * jnp.mean(jnp.sum((out - t) ** 2, -1))

    stateful = hl.convs_as_matmuls(hl.stateful_loss(net.apply, mse, mode=mode))
    assert isinstance(stateful, hl.StatefulLoss) and stateful.mode == mode
    loss = hl.curvature_loss(stateful, state)
    plain = hl.curvature_loss(hl.stateful_loss(net.apply, mse, mode=mode), state)
    wrapped_late = hl.convs_as_matmuls(plain)  # the curvature loss itself
    assert type(wrapped_late) is type(loss)
    assert _convs(plain, params, (x, y)) == 2
    assert _convs(loss, params, (x, y)) == 0 and _convs(wrapped_late, params, (x, y)) == 0

    def direct(p):  # the reference: the loss written on the library convolutions, dense
        return mse(net.apply(p, state, x, train=mode == "train")[0], y)

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    want = np.linalg.eigvalsh(jax.hessian(lambda f: direct(unravel(f)))(flat))[-1]
    for curvature in (loss, wrapped_late):
        op = hl.full_data_hvp(curvature, params, (x, y), chunk_size=5)
        got = hl.top_eigs(op, params, k=1, num_iters=flat.size).values[0]
        np.testing.assert_allclose(got, want, rtol=1e-9)
