"""Every example in examples/ runs as a user would run it, and prints what it promises."""

from __future__ import annotations

import ast
import math
import re
import sys

import pytest
from conftest import ROOT, mpiexec, run_process

EXAMPLES = ROOT / "examples"


def _run(tmp_path, name: str, n: int = 3, plain: bool = False, timeout: float = 300) -> str:
    argv = [sys.executable, str(EXAMPLES / name)]
    env = {"HPCRAY_TUNE_STORAGE": str(tmp_path / "results")}
    if plain:  # `python example.py`: hpcray starts the job itself
        proc = run_process(argv, timeout, env=env, cwd=str(tmp_path))
    else:
        from hpcray._private.job.launch import mpiexec_command

        cmd, launcher_env = mpiexec_command(n, argv, mpiexec=mpiexec())
        proc = run_process(cmd, timeout, env={**launcher_env, **env}, cwd=str(tmp_path))
    assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _value(out: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}\s*(.*)$", out, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{out}"
    return match.group(1).strip()


@pytest.mark.parametrize("plain", [False, True], ids=["mpiexec", "python"])
def test_quickstart(tmp_path, plain: bool) -> None:
    out = _run(tmp_path, "quickstart.py", plain=plain)
    assert ast.literal_eval(_value(out, "squares:")) == [i * i for i in range(8)]
    assert _value(out, "counter:") == "10"
    assert _value(out, "sum of put data:") == str(sum(range(1000)))


def test_actor_pipeline(tmp_path) -> None:
    out = _run(tmp_path, "actor_pipeline.py")
    summary = ast.literal_eval(_value(out, "sink summary:"))
    assert summary["batches"] == int(_value(out, "batches consumed:"))
    assert summary["total"] == float(_value(out, "expected total:"))


def test_actor_pool_map(tmp_path) -> None:
    out = _run(tmp_path, "actor_pool_map.py")
    assert ast.literal_eval(_value(out, "outputs:")) == [1 + 3 * i for i in range(20)]
    assert _value(out, "unordered results match:") == "True"


def test_monte_carlo_pi(tmp_path) -> None:
    out = _run(tmp_path, "monte_carlo_pi.py")
    estimate = float(_value(out, "estimate:"))
    expected = float(re.search(r"expected about ([0-9.]+)", out).group(1))
    assert abs(estimate - math.pi) < 6 * expected  # six standard errors


def test_tune_asha(tmp_path) -> None:
    out = _run(tmp_path, "tune_asha.py")
    best = re.search(r"best accuracy ([0-9.]+) after (\d+) epochs", out)
    assert best and 0.5 < float(best.group(1)) <= 1.0, out[-2000:]
    assert (tmp_path / "results").is_dir()


def test_tune_pbt(tmp_path) -> None:
    out = _run(tmp_path, "tune_pbt.py")
    best = re.search(r"best loss ([0-9.]+) with lr [0-9.e-]+; (\d+) exploit/explore steps", out)
    assert best and int(best.group(2)) > 0, out[-2000:]


def test_tune_cartpole(tmp_path) -> None:
    out = _run(tmp_path, "tune_cartpole.py")
    best = re.search(r"best mean return ([0-9.]+) after (\d+) updates", out)
    assert best and float(best.group(1)) > 0, out[-2000:]
