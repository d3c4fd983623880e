"""Jobs on shared nodes: clean exits that the MPI launcher does not kill, and ranks that do not
run out of file descriptors at a low soft limit."""

from __future__ import annotations

import json
import sys

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
