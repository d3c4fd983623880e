"""A trial whose process dies (os._exit, as a crash or the OOM killer would) in a 3-rank job:
the trial is retried or ends in ERROR, the sweep goes on and fit() returns."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT, mpiexec, run_process

JOBS = ROOT / "tests" / "jobs" / "tune"


def _job(tmp_path, name: str, *args: str, execution: str = "process"):
    from hpcray._private.job.launch import mpiexec_command

    cmd, env = mpiexec_command(3, [sys.executable, str(JOBS / name), *args], mpiexec=mpiexec())
    proc = run_process(cmd, 120, env={**env, "HPCRAY_EXECUTION": execution},
                       cwd=str(tmp_path))  # a hang fails here
    tag = name.split(".")[0].upper() + "-RESULT "
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(tag)]
    assert lines, proc.stdout + proc.stderr[-5000:]
    return json.loads(lines[-1][len(tag):]), proc


@pytest.mark.parametrize("when, max_failures, rows, execution", [
    # dies at its 2nd iteration, not retried: ERROR after 1 result; the others finish
    ("after", 0, [[0, 1, True], [1, 4, None], [2, 4, None]], "process"),
    # dies before its first report, retried once: it then finishes too
    ("before", 1, [[0, 4, None], [1, 4, None], [2, 4, None]], "process"),
    # in thread mode the trial's rank itself dies
    ("after", 0, [[0, 1, True], [1, 4, None], [2, 4, None]], "thread"),
])
def test_a_dying_trial_does_not_end_or_hang_the_sweep(tmp_path, when, max_failures, rows,
                                                      execution) -> None:
    r, proc = _job(tmp_path, "dying.py", when, str(max_failures), execution=execution)
    assert r["rows"] == rows and r["errors"] == (max_failures == 0)
    if execution == "thread":  # a rank really died; one worker rank left: the slots followed
        assert "rank 1" in proc.stderr or "rank 2" in proc.stderr
        assert r["cpus"] == 1.0
    else:  # only the trial's executor died: both ranks and their CPUs stay
        assert r["cpus"] == 2.0, proc.stderr


def test_runners_that_never_come_up_end_fit_with_tune_error(tmp_path) -> None:
    kind, text = _job(tmp_path, "unloadable.py")[0]
    assert kind == "TuneError" and "could not start a trial runner actor (3 tries)" in text
    assert "cannot load the trainable here" in text
