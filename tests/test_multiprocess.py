"""Across processes (#16 item 5): a localhost ``jax.distributed`` job of two CPU processes, each
holding half of the examples, gives the full-data HVP, the top eigenvalues and the Hutchinson
trace of one process to 1e-10 in float64 and 1e-6 in float32, and a sharded population (members split over the
processes, padded when uneven, one diverging) the vmapped one's losses and divergence. The test
starts the processes itself."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from multiprocess_worker import population_run, problem

import hessian_lab as hl

WORKER = Path(__file__).with_name("multiprocess_worker.py")
# One CPU device per process (a GPU machine would otherwise hand its GPUs to gloo's CPU job), and
# the suite's other XLA flags (conftest's back-end optimisation level and fusion emitter), so that
# the workers compile exactly as this process does and float32 results agree to rounding.
_FLAGS = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(_FLAGS)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_numbers_of_one(tmp_path):
    n, port = 2, _free_port()
    outs = [tmp_path / f"out{i}.json" for i in range(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), str(n), str(port), str(outs[i])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
        )
        for i in range(n)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=120)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the distributed job did not finish in 120 s")
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-2000:]
    got = [json.loads(o.read_text()) for o in outs]
    # one process, the whole dataset: the reference, in float64 (1e-10) and float32 (1e-6)
    want = {}
    for dtype in ("float64", "float32"):
        loss, params, data, v = problem(dtype)
        H = hl.full_data_hvp(loss, params, data, chunk_size=4)
        want[dtype] = (
            jax.tree.map(np.asarray, H(v)),
            np.asarray(hl.top_eigs(H, v, k=2, num_iters=20).values),
            float(hl.trace(H, jax.random.key(3), v, num_matvecs=12).value),
        )
    pops = {m: population_run("vmap", m) for m in (4, 3)}
    for g in got:
        assert g["process_count"] == n
        for m, ref in pops.items():
            assert ref.diverged.any() and not ref.diverged.all()  # a real mix
            np.testing.assert_array_equal(g[f"pop{m}_diverged"], ref.diverged)
            np.testing.assert_allclose(g[f"pop{m}_loss"], ref.metrics["loss"], rtol=1e-10)
        for dtype, rtol in (("float64", 1e-10), ("float32", 1e-6)):
            want_hv, want_eigs, want_trace = want[dtype]
            g_d = g[dtype]
            for k, a in want_hv.items():
                # to rtol relative to the product's norm: a near-zero entry of a float32 sum
                # may differ by more, relative to itself, when the two halves add up in another
                # order (the suite's unoptimised back end does not vectorise the sums)
                got = np.asarray(g_d["hv"][k])
                if dtype == "float64":  # entrywise, as before
                    np.testing.assert_allclose(got, a, rtol=rtol, atol=rtol / 100)
                diff = np.linalg.norm(got - a)
                assert diff <= rtol * np.linalg.norm(a), (k, dtype, diff)
            np.testing.assert_allclose(g_d["eigs"], want_eigs, rtol=rtol)
            np.testing.assert_allclose(g_d["trace"], want_trace, rtol=rtol)
