"""Tests for hpcray._private.job.launch, the hpcray CLI and ``python -m hpcray``."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpcray._private.job import launch
from hpcray._private.job.launch import (
    _LAUNCHER_VARS,
    RANK_WRAPPER,
    find_mpiexec,
    mpi_flavor,
    mpiexec_command,
    under_mpi_launcher,
)

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 60

_LAUNCHER_ENV = (*_LAUNCHER_VARS, "SLURM_STEP_ID")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _LAUNCHER_ENV and not k.startswith(("PMI_", "PMIX_"))
    }
    env.pop("HPCRAY_MPIEXEC", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [
            str(REPO),
            *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p],
        ]
    )
    env.update(extra)
    return env


def _stop_group(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Stop a timed-out command: SIGTERM first (hpcray run forwards it), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command in its own session; kill the whole group if it overruns."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=env or _env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        out, err = proc.communicate()
        pytest.fail(
            f"{args} timed out after {TIMEOUT}s\nstdout:\n{out}\nstderr:\n{err}"
        )
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.fixture
def fake_openmpi(tmp_path: Path) -> str:
    exe = tmp_path / "mpirun"
    exe.write_text(
        textwrap.dedent(
            """\
            #!/bin/sh
            if [ "$1" = "--version" ]; then
                echo "mpirun (Open MPI) 4.1.6"
                echo
                echo "Report bugs to http://www.open-mpi.org/community/help/"
                exit 0
            fi
            exit 1
            """
        )
    )
    exe.chmod(0o755)
    return str(exe)


# ---------------------------------------------------------------- find_mpiexec


def test_find_mpiexec_uses_wheel_next_to_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HPCRAY_MPIEXEC", raising=False)
    found = find_mpiexec()
    assert Path(found).name == "mpiexec"
    assert Path(found).parent == Path(sys.executable).parent
    assert os.access(found, os.X_OK)


def test_find_mpiexec_honours_env(
    monkeypatch: pytest.MonkeyPatch, fake_openmpi: str
) -> None:
    monkeypatch.setenv("HPCRAY_MPIEXEC", fake_openmpi)
    assert find_mpiexec() == fake_openmpi


def test_find_mpiexec_env_missing_is_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HPCRAY_MPIEXEC", str(tmp_path / "no-such-mpiexec"))
    with pytest.raises(RuntimeError, match="HPCRAY_MPIEXEC") as info:
        find_mpiexec()
    assert "pip install mpich" in str(info.value)


def test_find_mpiexec_nothing_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HPCRAY_MPIEXEC", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install mpich"):
        find_mpiexec()


# ---------------------------------------------------------------- flavour and command


def test_mpi_flavor_is_mpich_here() -> None:
    assert mpi_flavor(find_mpiexec()) == "mpich"


def test_mpi_flavor_openmpi_and_unknown(fake_openmpi: str, tmp_path: Path) -> None:
    assert mpi_flavor(fake_openmpi) == "openmpi"
    assert mpi_flavor(str(tmp_path / "missing")) == "unknown"


def test_mpiexec_command_mpich(monkeypatch: pytest.MonkeyPatch) -> None:
    exe = find_mpiexec()
    for var in ("UCX_TLS", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "HYDRA_HOST_FILE"):
        monkeypatch.delenv(var, raising=False)
    cmd, env = mpiexec_command(3, ["python", "x.py"], mpiexec=exe, extra=["-ppn", "3"])
    assert cmd[:3] == [exe, "-n", "3"]
    assert "-disable-auto-cleanup" in cmd
    assert cmd[-8:] == ["-ppn", "3", *RANK_WRAPPER, "python", "x.py"]  # a shell per rank
    assert env == {"UCX_TLS": "self,sm"}  # one node: shared memory only, no listening ports
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")  # several nodes: the network transport
    assert mpiexec_command(3, ["python", "x.py"], mpiexec=exe)[1] == {}
    monkeypatch.delenv("SLURM_JOB_NUM_NODES")
    monkeypatch.setenv("UCX_TLS", "tcp")  # the user's choice stands
    assert mpiexec_command(3, ["python", "x.py"], mpiexec=exe)[1] == {}


def test_mpiexec_command_openmpi(
    monkeypatch: pytest.MonkeyPatch, fake_openmpi: str
) -> None:
    monkeypatch.setattr(launch.os, "geteuid", lambda: 0)
    cmd, env = mpiexec_command(4, ["python", "x.py"], mpiexec=fake_openmpi)
    assert cmd[:3] == [fake_openmpi, "-n", "4"]
    assert "--oversubscribe" in cmd
    assert "-disable-auto-cleanup" not in cmd
    assert cmd[-2:] == ["python", "x.py"]
    assert env == {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}

    monkeypatch.setattr(launch.os, "geteuid", lambda: 1000)
    _, env = mpiexec_command(4, ["python", "x.py"], mpiexec=fake_openmpi)
    assert env == {}


def test_mpiexec_command_rejects_bad_n() -> None:
    with pytest.raises(ValueError):
        mpiexec_command(0, ["python"], mpiexec=find_mpiexec())


def test_under_mpi_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var in _LAUNCHER_ENV or var.startswith(("PMI_", "PMIX_")):
            monkeypatch.delenv(var)
    assert under_mpi_launcher() is False
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert under_mpi_launcher() is False  # srun without an MPI plugin
    monkeypatch.setenv("PMI_JOBID", "123.0")
    assert under_mpi_launcher() is True
    monkeypatch.delenv("SLURM_STEP_ID")
    monkeypatch.delenv("PMI_JOBID")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert under_mpi_launcher() is True


def test_under_mpi_launcher_inside_mpiexec(tmp_path: Path) -> None:
    code = "from hpcray._private.job.launch import under_mpi_launcher as u; print('UNDER', u())"
    res = _run([find_mpiexec(), "-n", "1", sys.executable, "-c", code], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "UNDER True" in res.stdout


# ---------------------------------------------------------------- CLI


def test_cli_version(tmp_path: Path) -> None:
    res = _run([sys.executable, "-m", "hpcray.cli", "--version"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("hpcray ")


def test_cli_dry_run(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("print('hi')\n")
    res = _run(
        [
            sys.executable,
            "-m",
            "hpcray.cli",
            "run",
            "--dry-run",
            "-n",
            "5",
            "--",
            "job.py",
            "a b",
            "-x",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    words = shlex.split(res.stdout)
    if words[0].startswith("UCX_TLS="):  # one node: the environment it sets is shown too
        words = words[1:]
    assert words[0] == find_mpiexec()
    assert words[1:3] == ["-n", "5"]
    assert "-disable-auto-cleanup" in words
    assert words[-6:] == [sys.executable, "-m", "hpcray", "job.py", "a b", "-x"]


def test_cli_dry_run_default_n_and_mpiexec_option(
    tmp_path: Path, fake_openmpi: str
) -> None:
    (tmp_path / "job.py").write_text("")
    res = _run(
        [
            sys.executable,
            "-m",
            "hpcray",
            "run",
            "--dry-run",
            "--mpiexec",
            fake_openmpi,
            "job.py",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    words = shlex.split(res.stdout)
    i = words.index(fake_openmpi)
    assert words[i + 1 : i + 3] == ["-n", str((os.cpu_count() or 1) + 1)]
    assert "--oversubscribe" in words


def test_cli_run_real_mpi_job(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """\
            import sys
            from mpi4py import MPI
            comm = MPI.COMM_WORLD
            print(f"RANK {comm.Get_rank()}/{comm.Get_size()} ARGV {sys.argv!r}", flush=True)
            """
        )
    )
    res = _run(
        [
            sys.executable,
            "-m",
            "hpcray.cli",
            "run",
            "-n",
            "2",
            "--",
            str(script),
            "a",
            "b",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    argv = repr([str(script), "a", "b"])
    for rank in (0, 1):
        assert f"RANK {rank}/2 ARGV {argv}" in res.stdout, res.stdout + res.stderr


def test_cli_returns_child_exit_code(tmp_path: Path) -> None:
    (tmp_path / "fail.py").write_text("import sys\nsys.exit(3)\n")
    res = _run(
        [sys.executable, "-m", "hpcray.cli", "run", "-n", "1", "fail.py"], cwd=tmp_path
    )
    assert res.returncode == 3, res.stdout + res.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is as good as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def test_cli_forwards_sigterm_to_job(tmp_path: Path) -> None:
    script = tmp_path / "sleepy.py"
    script.write_text(
        textwrap.dedent(
            """\
            import os, sys, time
            from mpi4py import MPI
            rank = MPI.COMM_WORLD.Get_rank()
            with open(os.path.join(sys.argv[1], f"pid.{rank}"), "w") as f:
                f.write(str(os.getpid()))
            time.sleep(120)
            """
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpcray.cli",
            "run",
            "-n",
            "2",
            str(script),
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        pidfiles = [tmp_path / f"pid.{r}" for r in (0, 1)]
        deadline = time.monotonic() + TIMEOUT
        while not all(p.exists() and p.read_text() for p in pidfiles):
            assert proc.poll() is None, "job exited before starting its ranks"
            assert time.monotonic() < deadline, "ranks did not start"
            time.sleep(0.05)
        pids = [int(p.read_text()) for p in pidfiles]
        os.kill(proc.pid, signal.SIGTERM)  # only the hpcray process, not its group
        rc = proc.wait(timeout=30)
        assert rc != 0
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids)
    finally:
        if proc.poll() is None:
            _stop_group(proc)


def test_cli_missing_script(tmp_path: Path) -> None:
    res = _run(
        [sys.executable, "-m", "hpcray.cli", "run", "-n", "2", "nope.py"], cwd=tmp_path
    )
    assert res.returncode == 2
    assert "nope.py" in res.stderr
    assert "not found" in res.stderr
    assert "hpcray run -n N" in res.stderr


def test_wrapper_script_dry_path(tmp_path: Path) -> None:
    wrapper = REPO / "launchers" / "mpirun-hpcray"
    assert os.access(wrapper, os.X_OK)
    res = _run(
        [str(wrapper), "2", "missing.py"], cwd=tmp_path, env=_env(PYTHON=sys.executable)
    )
    assert res.returncode == 2
    assert "missing.py" in res.stderr


# ---------------------------------------------------------------- python -m hpcray


def test_module_runs_script_as_main(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "helper.py").write_text("VALUE = 7\n")
    (sub / "job.py").write_text(
        textwrap.dedent(
            """\
            import sys
            import helper
            if __name__ == "__main__":
                print("MAIN", sys.argv, helper.VALUE)
            """
        )
    )
    res = _run([sys.executable, "-m", "hpcray", "sub/job.py", "x", "--y"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "MAIN ['sub/job.py', 'x', '--y'] 7" in res.stdout


def test_module_missing_script(tmp_path: Path) -> None:
    res = _run([sys.executable, "-m", "hpcray", "nope.py"], cwd=tmp_path)
    assert res.returncode == 2
    assert "nope.py" in res.stderr and "not found" in res.stderr


def test_module_no_args(tmp_path: Path) -> None:
    res = _run([sys.executable, "-m", "hpcray"], cwd=tmp_path)
    assert res.returncode == 2
    assert "usage" in res.stderr
