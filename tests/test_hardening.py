"""Jobs on shared nodes: clean exits that the MPI launcher does not kill, and ranks that do not
run out of file descriptors at a low soft limit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import mpiexec, run_process
from test_jobs import _survivors as _census

CLEAN_JOB = """
import hpcray
hpcray.init()
print("SUM", sum(hpcray.get([hpcray.remote(lambda x: x).remote(i) for i in range(10)])))
"""


def test_clean_exits_are_not_killed(tmp_path) -> None:
    """Plain mpiexec, 4 ranks, again and again: every run exits 0 (before, 1-4 of 10 ended
    'Killed (signal 9)': Hydra killed ranks whose exit skipped MPICH's exit handler)."""
    from hpcray._private.job.launch import mpiexec_command

    script = tmp_path / "job.py"
    script.write_text(CLEAN_JOB)
    cmd, env = mpiexec_command(4, [sys.executable, str(script)], mpiexec=mpiexec())
    for attempt in range(12):
        proc = run_process(cmd, 60, env=env, cwd=str(tmp_path))
        assert proc.returncode == 0 and "SUM 45" in proc.stdout, (
            f"run {attempt}: exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}")


FD_JOB = """
import json
import resource

import hpcray

hpcray.init()


@hpcray.remote
def limits():
    return resource.getrlimit(resource.RLIMIT_NOFILE)


print("RESULT " + json.dumps({"driver": resource.getrlimit(resource.RLIMIT_NOFILE),
                              "workers": hpcray.get([limits.remote() for _ in range(4)])}))
"""


def test_ranks_raise_a_low_soft_fd_limit(tmp_path) -> None:
    """Started with a soft limit of 256 (a common login-node default is 1024), every rank works
    with its hard limit."""
    from hpcray._private.job.launch import mpiexec_command

    script = tmp_path / "job.py"
    script.write_text(FD_JOB)
    cmd, env = mpiexec_command(3, [sys.executable, str(script)], mpiexec=mpiexec())
    wrapped = ["sh", "-c", 'ulimit -Sn 256 && exec "$@"', "sh", *cmd]
    proc = run_process(wrapped, 90, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    for soft, hard in [result["driver"], *result["workers"]]:
        assert soft == hard and soft > 256, result


ORPHAN_JOB = """
import time

import hpcray

hpcray.init()
print("STARTED", flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
def test_the_job_dies_with_its_launcher(tmp_path, sig) -> None:
    """SIGKILL or SIGHUP (a closed terminal) to `hpcray run`: no rank, no mpiexec is left
    (before, all 5 processes were still running 30 s later)."""
    script = tmp_path / f"orphan_{sig.name}.py"
    script.write_text(ORPHAN_JOB)
    out = open(tmp_path / "out.txt", "w")  # noqa: SIM115 - the launcher writes it
    launcher = subprocess.Popen([sys.executable, "-m", "hpcray", "run", "-n", "3", str(script)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(tmp_path))
    try:
        deadline = time.monotonic() + 60
        while "STARTED" not in (tmp_path / "out.txt").read_text():
            assert launcher.poll() is None and time.monotonic() < deadline, (
                (tmp_path / "out.txt").read_text())
            time.sleep(0.1)
        assert len(_census(str(script))) >= 3  # the ranks and mpiexec run
        launcher.send_signal(sig)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _census(str(script)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _census(str(script))
        assert not left, [p.info["cmdline"] for p in left]
    finally:
        out.close()
        for proc in _census(str(script)):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
