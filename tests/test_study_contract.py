"""Every registered study follows the kit (docs/dev/studies.md); a study written from that page
alone (tests/lr_study.py) runs through ``study run``, ``report``, ``merge`` and the contract."""

from __future__ import annotations

import json
from pathlib import Path

import lr_study
import numpy as np
import pytest
import study_contract
from typer.testing import CliRunner

from hessian_lab.cli.app import app
from hessian_lab.studies import registry

BUILTIN = registry.planned()


@pytest.mark.parametrize("name", BUILTIN)
def test_static_contract(name):
    study_contract.check_static(registry.get(name))


@pytest.mark.parametrize("name", BUILTIN)
def test_each_study_test_runs_the_dynamic_contract(name):
    text = (Path(__file__).parent / f"test_{name}.py").read_text()
    assert "study_contract.check_dynamic(" in text, f"tests/test_{name}.py"


@pytest.fixture
def lr_registered():
    registry.register("lr_study", lr_study, replace=True)
    yield lr_study
    registry.unregister("lr_study")


def test_a_new_study_from_the_guide(lr_registered, tmp_path):
    study_contract.check_static(lr_study)
    results = lr_study.run(lr_study.TINY)
    study_contract.check_dynamic(lr_study, results, tmp_path)
    assert lr_study.verdict(results)[0].endswith("reproduced")
    assert np.isnan(results.final_loss[-1])  # eta = 2.5 > 2/lambda_max: diverged


def test_a_new_study_through_the_cli(lr_registered, tmp_path):
    cli = CliRunner()
    full = tmp_path / "full"
    r = cli.invoke(app, ["study", "run", "lr_study", "--preset", "tiny", "--out", str(full)])
    assert r.exit_code == 0, r.output
    assert (full / "report.html").is_file()
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, d in enumerate(shards):
        args = [
            "study",
            "run",
            "lr_study",
            "--preset",
            "tiny",
            "--shard",
            f"{i}/2",
            "--out",
            str(d),
        ]
        r = cli.invoke(app, args)
        assert r.exit_code == 0, r.output
    merged = tmp_path / "merged"
    r = cli.invoke(app, ["merge", *map(str, shards), "--out", str(merged)])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["report", str(merged)])
    assert r.exit_code == 0, r.output
    a, b = lr_study.load(full), lr_study.load(merged)
    np.testing.assert_array_equal(a.final_loss, b.final_loss)
    assert json.dumps(lr_study.summary(a)) == json.dumps(lr_study.summary(b))  # NaN-safe
