"""Fixtures that run real multi-rank hpcray jobs with a hard timeout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "jobs"))  # jobkit, shared by tests and job scripts


def mpiexec() -> str:
    from hpcray._private.job.launch import find_mpiexec

    return find_mpiexec()


def require_cupy_gpu():
    """CuPy, or a skip of the calling test module where CuPy or a usable GPU is missing."""
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no GPU", allow_module_level=True)
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"no usable GPU: {exc}", allow_module_level=True)
    return cupy


def run_process(cmd: list[str], timeout: float, env: dict | None = None,
                cwd: str | None = None) -> subprocess.CompletedProcess:
    """Runs cmd in its own process group; on timeout kills the whole group and fails."""
    full_env = dict(os.environ)
    # tests/ holds the stand-in device (fakegpu), loaded by ranks as a device plugin
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "jobs"),
                                              full_env.get("PYTHONPATH", "")])
    full_env.setdefault("HPCRAY_DEVICE_PLUGINS", "fakegpu")
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        env = dict(env)
        if "PYTHONPATH" in env:  # the caller's paths first, then the suite's
            full_env["PYTHONPATH"] = env.pop("PYTHONPATH") + os.pathsep + full_env["PYTHONPATH"]
        full_env.update(env)
    from hpcray._private.job.launch import _segments

    segments = _segments()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {cmd}\n--- stdout\n{out}\n--- stderr\n{err}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # hpcray's own launchers (hpcray run, python script.py) must clean up themselves
        clean_shm(segments if os.path.basename(cmd[0]).startswith("mpiexec") else None)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def clean_shm(segments_before: set[str] | None) -> None:
    """After a job: the stand-in device's files of processes that are gone (killed ranks never
    unlink them); after a bare mpiexec, as hpcray's launcher does, the MPICH segments its
    killed ranks left."""
    from hpcray._private.job.launch import remove_stale_segments

    if segments_before is not None:
        remove_stale_segments(segments_before)
    for name in os.listdir("/dev/shm"):
        if name.startswith(("hpcray-fakegpu-", "hpcray-fakenccl-")):
            pid = int(name.split("-")[2])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"/dev/shm/{name}")
            except PermissionError:
                pass


def kill_all(procs) -> None:
    """SIGKILLs psutil processes, skipping those already gone."""
    import psutil

    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
def run_job(tmp_path):
    """run_job(code, n=3, timeout=120, spawn=False, env=None): runs code as a job's script.

    With spawn=True the script runs as a plain ``python script.py`` (one process that
    spawns its workers); otherwise under ``mpiexec -n n``.
    """

    def run(code: str, n: int = 3, timeout: float = 120, spawn: bool = False,
            env: dict | None = None, args: list[str] | None = None) -> subprocess.CompletedProcess:
        script = tmp_path / "job.py"
        script.write_text(textwrap.dedent(code))
        argv = [sys.executable, str(script), *(args or [])]
        if spawn:
            return run_process(argv, timeout, env=env, cwd=str(tmp_path))
        from hpcray._private.job.launch import mpiexec_command

        cmd, launcher_env = mpiexec_command(n, argv, mpiexec=mpiexec())
        return run_process(cmd, timeout, env={**launcher_env, **(env or {})}, cwd=str(tmp_path))

    return run


def pytest_collection_modifyitems(config, items) -> None:
    """Tests outside tests/unit start processes (MPI jobs, launchers, Slurm): marker ``job``."""
    unit = ROOT / "tests" / "unit"
    for item in items:
        if unit not in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.job)
