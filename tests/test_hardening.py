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


def _census(marker: str) -> list:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(
                    marker in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
    return found


def test_a_one_node_job_opens_no_port_of_its_own(tmp_path) -> None:
    """`hpcray run` on one node: no rank listens on a TCP port of its own (the MPICH wheel's UCX
    made every rank listen on two, one on the external address). What remains is Hydra's own
    PMI port, opened by mpiexec (and inherited, unused, by the ranks): docs/porting.md."""
    script = tmp_path / "ports.py"
    script.write_text(ORPHAN_JOB)
    out = open(tmp_path / "out.txt", "w")  # noqa: SIM115 - the launcher writes it
    env = {k: v for k, v in os.environ.items() if k != "UCX_TLS"}
    launcher = subprocess.Popen([sys.executable, "-m", "hpcray", "run", "-n", "3", str(script)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(tmp_path), env=env)
    try:
        deadline = time.monotonic() + 60
        while "STARTED" not in (tmp_path / "out.txt").read_text():
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        procs = _census(str(script))
        ranks = {p.pid for p in procs if "mpiexec" not in " ".join(p.info["cmdline"])}
        launchers = {p.pid for p in procs} - ranks
        assert len(ranks) >= 3
        def listening(pid: int) -> set:
            return {c.laddr for c in psutil.Process(pid).net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN}

        hydra = set().union(*(listening(pid) for pid in launchers))
        for pid in ranks:
            assert listening(pid) <= hydra, (pid, listening(pid) - hydra)
    finally:
        out.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        for proc in _census(str(script)):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


ERRORS_JOB = """
import json
import os

import hpcray


def rebuild(pid):
    if os.getpid() != pid:
        raise RuntimeError("only rebuilds where it was made")
    return "rebuilt"


class Local:
    def __reduce__(self):
        return (rebuild, (os.getpid(),))


hpcray.init()


@hpcray.remote
def make():
    return Local()


@hpcray.remote
def exhaust():
    raise MemoryError("asked for too much")


R = {}
try:
    hpcray.get(make.remote())
    R["unpickle"] = "no error"
except hpcray.exceptions.DeserializationError as exc:
    R["unpickle"] = [str(exc), type(exc.__cause__).__name__]
try:
    hpcray.get(exhaust.remote())
    R["memory"] = "no error"
except MemoryError as exc:
    R["memory"] = [isinstance(exc, hpcray.exceptions.TaskError), str(exc)]
print("RESULT " + json.dumps(R))
"""


def test_errors_say_what_failed(run_job) -> None:
    """A value that cannot be unpickled in the driver names the object, the rank and the cause;
    a task's MemoryError is caught by ``except MemoryError`` (it was a bare TaskError)."""
    proc = run_job(ERRORS_JOB, n=2, timeout=90)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    r = json.loads(line[len("RESULT "):])
    message, cause = r["unpickle"]
    assert "could not be unpickled on rank 0" in message and cause == "RuntimeError"
    assert "only rebuilds where it was made" in message
    assert r["memory"][0] is True and "asked for too much" in r["memory"][1]


CRASH_JOB = """
import os
import signal

import hpcray

hpcray.init()


@hpcray.remote
def die():
    os.kill(os.getpid(), signal.SIGKILL)


hpcray.get([die.remote() for _ in range(2)])
"""


def test_a_crashed_job_leaves_no_mpich_segment(tmp_path) -> None:
    """Ranks SIGKILLed: MPICH leaves /dev/shm/mpich_shm_* behind (723 MB seen after a day of
    tests); `hpcray run` removes those of its job that nothing maps any more."""
    from hpcray._private.job import launch

    script = tmp_path / "crash.py"
    script.write_text(CRASH_JOB)
    before = launch._segments()
    proc = run_process([sys.executable, "-m", "hpcray", "run", "-n", "3", str(script)], 120,
                       cwd=str(tmp_path))
    assert proc.returncode != 0
    left = launch._segments() - before - launch._mapped_segments()
    assert not left, left
