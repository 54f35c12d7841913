"""Operators against dense references: HVP, GGN, NTK, full-data chunking, blocks, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_problems import make_problem

import hessian_lab as hl
from hessian_lab import testing
from hessian_lab import tree as tu

CASES = [("tanh", "mse"), ("relu", "mse"), ("tanh", "xent"), ("relu", "xent")]


def _flat(t):
    return np.asarray(tu.ravel(t)[0])


@pytest.mark.parametrize(("act", "loss"), CASES)
def test_hvp_and_linearized_hvp_match_dense_hessian(act, loss, getkey):
    params, _, _, loss_fn, batch = make_problem(getkey(), act, loss)
    H = testing.dense_hessian(loss_fn, params, batch)
    v = tu.random_like(getkey(), params)
    for op in (hl.hvp(loss_fn, params, batch), hl.linearized_hvp(loss_fn, params, batch)):
        np.testing.assert_allclose(_flat(op(v)), H @ _flat(v), rtol=1e-10, atol=1e-12)
    # the dense materialisation of the operator is the Hessian, column by column
    np.testing.assert_allclose(
        testing.dense_operator(hl.hvp(loss_fn, params, batch), params), H, atol=1e-12
    )


@pytest.mark.parametrize(("act", "loss"), CASES)
def test_ggn_matches_dense_jt_h_j(act, loss, getkey):
    params, apply, out_loss, _, (x, y) = make_problem(getkey(), act, loss)
    G = testing.dense_ggn(apply, out_loss, params, x, y)
    v = tu.random_like(getkey(), params)
    got = _flat(hl.ggn(apply, out_loss, params, x, y)(v))
    np.testing.assert_allclose(got, G @ _flat(v), rtol=1e-10, atol=1e-12)
    # for MSE the GGN is J^T J / n: check against the Jacobian directly
    if loss == "mse":
        flat, unravel = tu.ravel(params)
        J = jax.jacobian(lambda w: apply(unravel(w), x).ravel())(flat)
        np.testing.assert_allclose(G, J.T @ J / x.shape[0], atol=1e-12)


def test_ntk_product_matches_dense_jjt(getkey):
    params, apply, _, _, (x, _) = make_problem(getkey())
    K = testing.dense_ntk(apply, params, x)
    u = jax.random.normal(getkey(), apply(params, x).shape)
    got = hl.ntk(apply, params, x)(u)
    np.testing.assert_allclose(np.ravel(got), K @ np.ravel(u), rtol=1e-10)


@pytest.mark.parametrize("linearize", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 10])
@pytest.mark.parametrize(("act", "loss"), [("tanh", "mse"), ("relu", "xent")])
def test_full_data_hvp_is_hessian_of_mean_loss_for_unequal_chunks(
    chunk_size, act, loss, linearize, getkey
):
    params, _, _, loss_fn, batch = make_problem(getkey(), act, loss, n=10)
    H = testing.dense_hessian(loss_fn, params, batch)  # mean loss over all 10 examples
    v = tu.random_like(getkey(), params)

    def product(p, v):
        return hl.full_data_hvp(loss_fn, p, batch, chunk_size=chunk_size, linearize=linearize)(v)

    want = H @ _flat(v)
    np.testing.assert_allclose(_flat(jax.jit(product)(params, v)), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [2, 3])
def test_chunked_conv_hvp_matches_dense_in_a_scan_with_canonical_convolutions(chunk_size, getkey):
    # a convolutional loss keeps its chunk scan (a while loop in the compiled product), and on
    # CPU every convolution in it is in XLA:CPU's library layout (hessian_lab._conv_layout)
    from hessian_lab import models
    from hessian_lab._conv_layout import conv_layouts

    net = models.cnn((4, 4, 1), 2, depth=1, width=2, activation="tanh")
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (10, 4, 4, 1))
    y = jax.random.normal(getkey(), (10, 2))

    def loss_fn(p, batch):
        return jnp.mean((net.apply(p, batch[0]) - batch[1]) ** 2)

    H = testing.dense_hessian(loss_fn, params, (x, y))
    v = tu.random_like(getkey(), params)

    def product(p, v):
        return hl.full_data_hvp(loss_fn, p, (x, y), chunk_size=chunk_size)(v)

    np.testing.assert_allclose(_flat(jax.jit(product)(params, v)), H @ _flat(v), rtol=1e-10)
    compiled = jax.jit(product).lower(params, v).compile().as_text()
    assert "while" in compiled
    layouts = conv_layouts(compiled)
    assert layouts and (jax.default_backend() != "cpu" or layouts == {"b01f_01io->b01f"})


def test_linearized_full_data_hvp_reuses_one_linearisation_in_lanczos(getkey):
    # Same top eigenpairs as the recomputing operator, and the loss (forward pass) is traced
    # once per chunk shape when the operator is built, never again per product.
    params, _, _, loss_fn, batch = make_problem(getkey(), "tanh", "mse", n=12)
    calls = []

    def counted_loss(p, b):
        calls.append(None)  # runs at trace time: counts traced forward passes
        return loss_fn(p, b)

    v0 = tu.random_like(getkey(), params)
    H = testing.dense_hessian(loss_fn, params, batch)
    want = np.linalg.eigvalsh(H)[::-1][:2]
    for linearize in (False, True):
        op = hl.full_data_hvp(counted_loss, params, batch, chunk_size=5, linearize=linearize)
        got = hl.top_eigs(op, v0, k=2, num_iters=int(H.shape[0])).values
        np.testing.assert_allclose(got, want, rtol=1e-9)
    # linearize=True traced the loss at construction only (2 chunk shapes: 5 and the tail 2)
    calls.clear()
    op = hl.full_data_hvp(counted_loss, params, batch, chunk_size=5, linearize=True)
    assert len(calls) == 2
    op(v0)
    op(v0)
    assert len(calls) == 2
    # the counter does see per-product traces: the recomputing operator traces at every product
    plain = hl.full_data_hvp(counted_loss, params, batch, chunk_size=5)
    plain(v0)
    assert len(calls) > 2


def test_full_data_hvp_rejects_non_bool_linearize(getkey):
    params, _, _, loss_fn, batch = make_problem(getkey(), n=10)
    with pytest.raises(ValueError, match="linearize"):
        hl.full_data_hvp(loss_fn, params, batch, chunk_size=2, linearize="yes")


def test_full_data_ggn_matches_dense(getkey):
    params, apply, out_loss, _, (x, y) = make_problem(getkey(), "tanh", "xent", n=9)
    G = testing.dense_ggn(apply, out_loss, params, x, y)
    v = tu.random_like(getkey(), params)
    op = hl.full_data_ggn(apply, out_loss, params, x, y, chunk_size=4)
    np.testing.assert_allclose(_flat(op(v)), G @ _flat(v), rtol=1e-10, atol=1e-12)


def test_mean_of_batch_sharpness_is_not_the_sharpness(getkey):
    """The trap older tools fell into: averaging per-batch top eigenvalues biases upward."""
    params, _, _, loss_fn, (x, y) = make_problem(getkey(), "tanh", "mse", n=12)
    full = np.linalg.eigvalsh(testing.dense_hessian(loss_fn, params, (x, y)))[-1]
    per_batch = [
        np.linalg.eigvalsh(testing.dense_hessian(loss_fn, params, (x[i : i + 3], y[i : i + 3])))[-1]
        for i in range(0, 12, 3)
    ]
    assert np.mean(per_batch) > full  # convexity of lambda_max
    op = hl.full_data_hvp(loss_fn, params, (x, y), chunk_size=3)
    got = hl.top_eigs(op, tu.random_like(getkey(), params), k=1, num_iters=30).values[0]
    np.testing.assert_allclose(got, full, rtol=1e-8)


def test_restrict_gives_the_diagonal_block(getkey):
    params, _, _, loss_fn, batch = make_problem(getkey())
    params = {"first": params["w"][0], "rest": (params["w"][1:], params["b"])}

    def loss2(p, b):
        return loss_fn({"w": [p["first"], *p["rest"][0]], "b": p["rest"][1]}, b)

    H = testing.dense_hessian(loss2, params, batch)
    m = params["first"].size  # "first" ravels first (dict keys sorted)
    op, block = hl.restrict(hl.hvp(loss2, params, batch), params, ["first"])
    np.testing.assert_allclose(testing.dense_operator(op, block), H[:m, :m], atol=1e-12)
    with pytest.raises(ValueError, match="keys"):
        hl.restrict(op, params, ["nope"])


def test_check_deterministic(getkey):
    params, _, _, loss_fn, batch = make_problem(getkey())
    v = tu.random_like(getkey(), params)
    hl.check_deterministic(hl.hvp(loss_fn, params, batch), v)  # passes silently
    calls = []

    def dropout_like(v):  # a different mask on every call, as dropout would draw
        calls.append(None)
        mask = jax.random.bernoulli(jax.random.key(len(calls)), 0.5, (5,))
        return jax.tree.map(lambda a: a * mask.sum(), v)

    with pytest.raises(ValueError, match="not deterministic"):
        hl.check_deterministic(dropout_like, v)


def test_operators_reject_non_finite_params(getkey):
    params, apply, out_loss, loss_fn, (x, y) = make_problem(getkey())
    bad = jax.tree.map(lambda a: a, params)
    bad["w"][1] = bad["w"][1].at[0, 0].set(jnp.nan)
    for make in (
        lambda: hl.hvp(loss_fn, bad, (x, y)),
        lambda: hl.ggn(apply, out_loss, bad, x, y),
        lambda: hl.ntk(apply, bad, x),
        lambda: hl.full_data_hvp(loss_fn, bad, (x, y), chunk_size=2),
    ):
        with pytest.raises(ValueError, match=r"params.*\['w'\]\[1\]"):
            make()


@pytest.mark.parametrize("chunk_size", [0, 11, 2.5, True])
def test_full_data_rejects_chunk_size_that_does_not_fit(chunk_size, getkey):
    params, _, _, loss_fn, batch = make_problem(getkey(), n=10)
    with pytest.raises(ValueError, match="chunk_size"):
        hl.full_data_hvp(loss_fn, params, batch, chunk_size=chunk_size)


def test_full_data_rejects_mismatched_data(getkey):
    params, _, _, loss_fn, (x, y) = make_problem(getkey(), n=10)
    with pytest.raises(ValueError, match="leading"):
        hl.full_data_hvp(loss_fn, params, (x, y[:9]), chunk_size=2)


def test_products_at_a_non_finite_loss_are_nan_not_a_finite_number():
    # A NaN label under MSE leaves the Hessian X^T X finite, but the loss at the point is NaN:
    # every operator must say so (NaN products), never report the finite X^T X v.
    x = jax.random.normal(jax.random.key(0), (8, 3))
    y = jnp.zeros(8).at[2].set(jnp.nan)
    loss = lambda p, b: 0.5 * jnp.mean((b[0] @ p - b[1]) ** 2)  # noqa: E731
    out_loss = lambda o, t: 0.5 * jnp.mean((o - t) ** 2)  # noqa: E731
    p, v = jnp.ones(3), jnp.ones(3)
    ops = {
        "hvp": hl.hvp(loss, p, (x, y)),
        "linearized_hvp": hl.linearized_hvp(loss, p, (x, y)),
        "full_data_hvp": hl.full_data_hvp(loss, p, (x, y), chunk_size=3),
        "full_data_hvp(linearize)": hl.full_data_hvp(loss, p, (x, y), chunk_size=3, linearize=True),
        "ggn": hl.ggn(lambda q, xx: xx @ q, out_loss, p, x, y),
        "full_data_ggn": hl.full_data_ggn(lambda q, xx: xx @ q, out_loss, p, x, y, chunk_size=3),
    }
    for name, op in ops.items():
        assert np.all(np.isnan(np.asarray(op(v)))), name
    # The same operators at a finite point give the closed form X^T X v / n.
    y = jnp.zeros(8)
    want = np.asarray(x.T @ (x @ v)) / 8
    np.testing.assert_allclose(np.asarray(hl.hvp(loss, p, (x, y))(v)), want, rtol=1e-5)
    lin = hl.full_data_hvp(loss, p, (x, y), chunk_size=3, linearize=True)
    np.testing.assert_allclose(np.asarray(lin(v)), want, rtol=1e-5)
