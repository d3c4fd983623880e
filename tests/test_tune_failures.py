"""A trial whose process dies (os._exit, as a crash or the OOM killer would) in a 3-rank job:
the trial is retried or ends in ERROR, the sweep goes on and fit() returns."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT, mpiexec, run_process

JOB = ROOT / "tests" / "jobs" / "tune" / "dying.py"


def _sweep(tmp_path, when: str, max_failures: int) -> dict:
    from hpcray._private.launch import mpiexec_command

    cmd, env = mpiexec_command(3, [sys.executable, str(JOB), when, str(max_failures)],
                               mpiexec=mpiexec())
    proc = run_process(cmd, 120, env=env, cwd=str(tmp_path))  # a hang fails here
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("DYING-RESULT ")]
    assert lines, proc.stdout + proc.stderr[-5000:]
    assert "rank 1" in proc.stderr or "rank 2" in proc.stderr  # a rank really died
    return json.loads(lines[-1].split(" ", 1)[1])


@pytest.mark.parametrize("when, max_failures, rows", [
    # dies at its 2nd iteration, not retried: ERROR after 1 result; the others finish
    ("after", 0, [[0, 1, True], [1, 4, None], [2, 4, None]]),
    # dies before its first report, retried once: it then finishes too
    ("before", 1, [[0, 4, None], [1, 4, None], [2, 4, None]]),
])
def test_a_dying_trial_does_not_end_or_hang_the_sweep(tmp_path, when, max_failures,
                                                      rows) -> None:
    r = _sweep(tmp_path, when, max_failures)
    assert r["rows"] == rows and r["errors"] == (max_failures == 0)
    assert r["cpus"] == 1.0  # one worker rank left: the slots followed it
