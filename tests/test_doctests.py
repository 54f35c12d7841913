"""The examples in every module's docstrings and in the README run as written.

Module docstrings run as doctests (``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``; an example that
needs the user's own model says ``# doctest: +SKIP``). The README's Python blocks run in order
after a preamble that defines the names they take as the user's (``loss_fn``, ``params``, ``x``,
``y``) on a small problem (600 examples: the README chunks by 512); the one rule: ``num_steps=1000`` becomes ``num_steps=30``.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import hessian_lab

PACKAGES = ("hessian_lab", "hessian_lab.studies", "hessian_lab.cli", "hessian_lab.data",
            "hessian_lab.models")  # fmt: skip
README = Path(__file__).resolve().parents[1] / "README.md"


def _modules() -> list[str]:
    names = set()
    for pkg in PACKAGES:
        names.add(pkg)
        path = importlib.import_module(pkg).__path__
        names |= {m.name for m in pkgutil.iter_modules(path, pkg + ".") if not m.ispkg}
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_module_docstring_examples(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


PREAMBLE = """
import jax, jax.numpy as jnp
import hessian_lab as hl
from hessian_lab import losses, models
net = models.mlp(4, 2, depth=1, width=8)
loss_fn = losses.make_loss_fn(net.apply, "mse")
x = jax.random.normal(jax.random.key(0), (600, 4))
y = jax.random.normal(jax.random.key(1), (600, 2))
params = net.init(jax.random.key(2))
"""


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    code = "\n".join(blocks).replace("num_steps=1000", "num_steps=30")
    env: dict = {}
    exec(compile(PREAMBLE + code, str(README), "exec"), env)
    assert env["r"].history["loss"].shape == (30,)
    # and the "directly, once" line under the blocks
    line = re.search(r"Or directly, once: `(.*?)`", README.read_text()).group(1)
    top = eval(line, env)
    assert float(top) > 0
    assert hessian_lab.__version__
