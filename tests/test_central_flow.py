"""The central flow: the complementarity solver against closed forms, scipy and its KKT
conditions; the integrator against flows known in closed form (a toy that stops at the edge, and
projected gradient flow on a hyperplane); the study's TINY against GD itself, and its contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import study_contract

from hessian_lab._central_flow import gd_central_flow, solve_sdcp
from hessian_lab.studies import central_flow as cf

_solve = jax.jit(solve_sdcp, static_argnames="num_iters")


def _gram(t):
    """(k, k, D) vectors t_ij -> (k, k, k, k) Gram tensor <t_ij, t_ab>."""
    return np.einsum("ijd,abd->ijab", t, t)


def _sym_vectors(rng, k, d):
    t = rng.normal(size=(k, k, d))
    return 0.5 * (t + t.transpose(1, 0, 2))


def test_sdcp_one_eigenvalue_is_the_closed_form():
    for c, g in ((-0.3, 2.0), (0.7, 2.0), (-1e-3, 5e-2)):
        X = _solve(np.array([[c]]), np.array([[[[g]]]]), num_iters=3000)
        assert float(X[0, 0]) == pytest.approx(max(0.0, -2 * c / g), rel=1e-10, abs=1e-14)


def test_sdcp_diagonal_case_is_nnls():
    # t_ij = 0 off the diagonal and offset_ii = <t_ii, g>: min_{x >= 0} |g + 1/2 sum x_i t_ii|^2
    rng = np.random.default_rng(0)
    k, d = 3, 8
    tdiag, g = rng.normal(size=(k, d)), rng.normal(size=d)
    t = np.zeros((k, k, d))
    t[np.arange(k), np.arange(k)] = tdiag
    X = np.asarray(_solve(np.diag(tdiag @ g), _gram(t), num_iters=3000))
    ref, _ = scipy.optimize.nnls(0.5 * tdiag.T, -g)
    np.testing.assert_allclose(np.diag(X), ref, atol=1e-7)
    np.testing.assert_allclose(X - np.diag(np.diag(X)), 0.0, atol=1e-12)


@pytest.mark.parametrize("seed", [1, 2])
def test_sdcp_meets_its_kkt_conditions_and_beats_scipy(seed):
    rng = np.random.default_rng(seed)
    k = 3
    t = _sym_vectors(rng, k, 12)
    a = rng.normal(size=(k, k))
    offset = 0.5 * (a + a.T) - 0.5 * np.eye(k)  # some negative eigenvalues
    G = _gram(t)
    X = np.asarray(_solve(offset, G, num_iters=3000))
    Y = offset + 0.5 * np.einsum("ijab,ab->ij", G, X)
    scale = np.linalg.norm(offset)
    assert np.linalg.eigvalsh(X)[0] >= -1e-10
    assert np.linalg.eigvalsh(Y)[0] >= -1e-6 * scale
    assert abs(np.vdot(X, Y)) <= 1e-6 * scale * np.linalg.norm(X)
    assert 0 < np.sum(np.linalg.eigvalsh(X) > 1e-8) <= k

    C, B = offset, G.reshape(k * k, k * k)

    def f(Xm):
        x = np.asarray(Xm).ravel()
        return float(C.ravel() @ x + 0.25 * x @ B @ x)

    def f_chol(v):  # X = L L^T covers the PSD cone: an unconstrained reference
        L = np.zeros((k, k))
        L[np.tril_indices(k)] = v
        return f(L @ L.T)

    best = min(
        scipy.optimize.minimize(f_chol, rng.normal(size=k * (k + 1) // 2), method="BFGS").fun
        for _ in range(4)
    )
    assert f(X) <= best + 1e-8 * abs(best)
    assert f(X) == pytest.approx(best, rel=1e-5)


def _edge_loss(p, batch):
    n, Q, q = batch
    w = p["w"]
    return 0.5 * jnp.dot(n, w) * p["x"][0] ** 2 + 0.5 * w @ Q @ w - q @ w


ETA, DT, STEPS = 0.5, 0.05, 300  # the edge is at 2/eta = 4


@pytest.fixture(scope="module")
def edge_flow():
    """L = 1/2 <n, w> x^2 + 1/2 w^T Q w - <q, w>, compiled once for every (n, Q, q, start).

    At x = 0 (where x stays) the Hessian is diag(<n, w>, Q): the sharpness is S = <n, w> along
    x, grad S = (0, n), and the central flow is gradient flow of l(w) = 1/2 w^T Q w - <q, w>,
    projected onto the plane <n, w> = 2/eta while it pushes outwards; sigma^2 = -2 <n, grad l>
    / |n|^2. The second tracked eigenvalue (max Q < 2/eta) must get no oscillation.
    """
    flow = gd_central_flow(_edge_loss, dt=DT, k=2, num_iters=4, sdcp_iters=100)

    @jax.jit
    def go(state, batch, lr):
        return jax.lax.scan(lambda s, _: flow.step(s, batch, lr), state, None, length=STEPS)

    def integrate(n, Q, q, w0, lr=ETA):
        state = flow.init({"x": jnp.zeros(1), "w": jnp.asarray(w0)}, jax.random.key(1))
        batch = tuple(jnp.asarray(a, jnp.float64) for a in (n, Q, q))
        return jax.device_get(go(state, batch, lr))  # numpy: no eager op to compile

    integrate.go = go
    return integrate


def test_flow_rises_to_the_edge_then_stops_with_its_closed_form_oscillation(edge_flow):
    # n = e1, Q = diag(0, 1, 1/2), q = b e1: y = w1 rises as gradient flow, y = y0 + eta b t
    # (Euler is exact on it); at y = 2/eta, sigma^2 = 2 b cancels the drift exactly, and the
    # predicted loss is l + sigma^2 S / 2 = -b 2/eta + b 2/eta = 0 (+ the decaying w2, w3).
    b, y0 = 0.3, 3.0
    Q = np.diag([0.0, 1.0, 0.5])
    w0 = np.array([y0, 0.4, -0.2])
    final, info = edge_flow(np.eye(3)[0], Q, b * np.eye(3)[0], w0)
    t = np.arange(STEPS) * DT
    y_exact = np.minimum(y0 + ETA * b * t, 2 / ETA)
    np.testing.assert_allclose(info.eigenvalues[:, 0], y_exact, atol=1e-9)
    edge = t > (2 / ETA - y0) / (ETA * b) + DT
    np.testing.assert_allclose(info.X[edge, 0, 0], 2 * b, rtol=1e-9)
    np.testing.assert_allclose(info.X[t < (2 / ETA - y0) / (ETA * b) - DT, 0, 0], 0.0, atol=1e-12)
    # w2, w3: Euler on gradient flow, exactly (1 - eta dt Q_ii)^j of the start
    decay = (1 - ETA * DT * np.diag(Q)[1:]) ** STEPS
    np.testing.assert_allclose(final.params["w"][1:], w0[1:] * decay, rtol=1e-9)
    j = np.arange(STEPS)
    rest = 0.5 * np.diag(Q)[1:] @ (w0[1:, None] * (1 - ETA * DT * np.diag(Q)[1:, None]) ** j) ** 2
    np.testing.assert_allclose(info.predicted_loss[edge], rest[edge], atol=1e-9)
    assert float(final.params["w"][0]) == pytest.approx(2 / ETA, abs=1e-9)


def test_flow_on_the_edge_is_projected_gradient_flow_in_closed_form(edge_flow):
    n = np.array([0.8, 0.6, 0.3])
    Q = np.diag([1.0, 1.5, 0.5])
    q = np.array([4.0, 4.0, 2.0])
    edge = 2 / ETA
    kkt = np.block([[Q, n[:, None]], [n[None, :], np.zeros((1, 1))]])
    w_c = np.linalg.solve(kkt, np.append(q, edge))[:3]  # the minimiser of l on the plane
    P = np.eye(3) - np.outer(n, n) / (n @ n)
    r0 = P @ np.array([0.6, -0.8, 1.0])
    t = np.arange(STEPS) * DT
    w_t = np.stack([w_c + scipy.linalg.expm(-ETA * s * P @ Q @ P) @ r0 for s in t])
    sigma2 = -2 * (w_t @ Q - q) @ n / (n @ n)
    assert sigma2.min() > 0.1  # the constraint stays active: the closed form holds throughout
    final, info = edge_flow(n, Q, q, w_c + r0)
    np.testing.assert_allclose(info.eigenvalues[:, 0], edge, atol=1e-9)  # S is linear in w
    assert np.max(info.eigenvalues[:, 1]) < edge
    np.testing.assert_allclose(info.X[:, 1, 1], 0.0, atol=1e-9)
    # Euler's discrete solution exactly: r_j = (I - eta dt P Q P)^j r0 ...
    r_end = np.linalg.matrix_power(np.eye(3) - ETA * DT * P @ Q @ P, STEPS) @ r0
    np.testing.assert_allclose(final.params["w"], w_c + r_end, atol=1e-9)
    # ... and the ODE's to first order in dt: eta dt max(Q) / 2 ~ 2% of the motion
    assert np.max(np.abs(np.asarray(final.params["w"]) - w_t[-1])) <= 0.02 * np.linalg.norm(r0)
    np.testing.assert_allclose(np.trace(info.X, axis1=1, axis2=2), sigma2, rtol=0.02)
    l_t = 0.5 * np.einsum("ti,ij,tj->t", w_t, Q, w_t) - w_t @ q
    np.testing.assert_allclose(info.predicted_loss, l_t + sigma2 / ETA, rtol=0.01)
    # one compiled flow serves every learning rate
    edge_flow(n, Q, q, w_c + r0, lr=0.25)
    assert edge_flow.go._cache_size() == 1


@pytest.fixture(scope="module")
def tiny():
    return cf.run(cf.TINY)


def test_tiny_flow_tracks_gd_at_the_edge(tiny, tmp_path):
    r = tiny
    assert not r.diverged.any() and 0 < r.reach_step[0] < r.settle_step[0]
    # the flow's sharpness climbs with GD's (gradient flow before the edge), then sits at 2/eta
    # (the projection), above it by no more than the Euler step's second-order error
    lr, t_flow = r.lrs[0], np.arange(r.flow_eigenvalues.shape[1]) * r.config.flow_dt
    eta_s = lr * r.flow_eigenvalues[0, :, 0]
    assert np.max(eta_s) <= 2.0 * 1.001
    assert np.all(np.abs(eta_s[t_flow >= r.flow_reach_time[0]] - 2) <= 2e-3)
    assert r.sharpness_error[0] <= cf.SHARPNESS_TOLERANCE
    # GD's time-averaged loss after the onset is the flow's L + 1/2 <Sigma, H>, not its L alone
    settled = np.arange(r.gd_loss.shape[1]) >= r.settle_step[0]
    gd_mean = np.mean(r.gd_loss[0, settled])
    bare = np.mean(np.interp(np.flatnonzero(settled), t_flow, r.flow_loss[0]))
    assert r.loss_mean_error[0] <= cf.LOSS_TOLERANCE
    assert r.loss_mean_error[0] < 0.5 * abs(bare / gd_mean - 1)
    assert cf.verdict(r)[0].split(";")[0].endswith("reproduced")
    study_contract.check_dynamic(cf, r, tmp_path)


def test_bad_configs_are_refused_by_field():
    for kw, field in (
        ({"lrs": ()}, "lrs"),
        ({"lrs": (0.1, 0.1)}, "lrs"),
        ({"flow_dt": 0.0}, "flow_dt"),
        ({"flow_dt": 2.0}, "flow_dt"),
        ({"window": 7}, "window"),
        ({"k": 0}, "k"),
        ({"k": 30, "lanczos_iters": 20}, "lanczos_iters"),
        ({"lrs": (float("nan"),)}, "lrs"),
    ):
        with pytest.raises(ValueError, match=f"^{field}"):
            cf.Config(**kw)
    with pytest.raises(ValueError, match=r"^lanczos_iters"):
        cf.check_inputs(cf.Config(width=1, depth=1, k=1, lanczos_iters=10**6))
    with pytest.raises(ValueError, match=r"^dt"):
        gd_central_flow(lambda p, b: 0.0, dt=-1.0)
