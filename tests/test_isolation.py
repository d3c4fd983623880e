"""Execution isolation: user code runs in executor processes under each worker rank, so a
crash is a task failure or an actor restart, never the job's end (issue 14)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import kill_all, run_process
from test_core import PRELUDE, job_file, run

pytestmark = pytest.mark.job


def _left_in(directory: Path, until: float) -> list[str]:
    """Processes still working in a finished job's directory (ranks, forkservers, executors:
    they all run there), at ``until``; killed, and described."""
    while True:
        found = []
        for proc in psutil.process_iter(["pid", "cwd", "status"]):
            try:
                if proc.pid != os.getpid() and proc.info["cwd"] == str(directory) and \
                        proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if not found or time.monotonic() >= until:
            break
        time.sleep(0.1)
    described = [f"{p.pid}: {' '.join(p.cmdline())}" for p in found if p.is_running()]
    kill_all(found)
    return described


def _check_crashes(r: dict) -> None:
    assert r["sigkill_retried"][0] == "ok" and r["sigkill_retried"][1][0] == "retried", r
    assert r["segfault"][0] == "WorkerCrashedError" and "SIGSEGV" in r["segfault"][1], r
    assert r["exit"][0] == "WorkerCrashedError" and "status 3" in r["exit"][1], r
    assert r["after"] == [i * i for i in range(8)], r
    actor = r["actor"]
    (v1, pid1), (v2, pid2) = actor["before"]
    assert (v1, v2) == (101, 102) and pid1 == pid2 != r["driver"], r
    assert actor["died"][0] == "ActorDiedError" and "SIGKILL" in actor["died"][1], r
    value, pid3 = actor["restarted"]
    assert value == 105 and pid3 != pid1, r  # its constructor ran again, in a new process
    assert actor["final"][0] == "ActorDiedError", r  # max_restarts=1: no second restart
    assert actor["after_final"][0] == "ActorDiedError", r
    assert "SIGSEGV" in actor["after_final"][1], r
    assert r["cancel_force"][0] == "TaskCancelledError", r
    assert r["cancel"][0] == "TaskCancelledError", r  # interrupts time.sleep, as Ray does
    assert r["after_cancel"] == 49, r


@pytest.mark.parametrize("launcher", ["mpiexec", "python", "hpcray-run"])
def test_crashes_are_task_failures(run_job, tmp_path, launcher):
    """Segfault, SIGKILL and os._exit in tasks; an actor killed twice; cancel of a task stuck
    in time.sleep: the driver gets Ray's errors (or the retried result), later work runs, the
    job exits 0 and leaves no process and no /dev/shm segment behind."""
    from hpcray._private.job.launch import _mapped_segments, _segments

    start = time.monotonic()
    segments = _segments()
    if launcher == "hpcray-run":
        script = tmp_path / "job.py"
        script.write_text(PRELUDE + job_file("isolation/crashes.py"))
        proc = run_process([sys.executable, "-m", "hpcray", "run", "-n", "3", str(script)], 180,
                           cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        r = json.loads(line[len("RESULT "):])
    else:
        r, proc = run(run_job, job_file("isolation/crashes.py"), spawn=launcher == "python",
                      timeout=180)
    _check_crashes(r)
    assert _left_in(tmp_path, until=start + 170) == []
    # MPICH's segments of the job: hpcray's launchers remove them (for a bare mpiexec, the
    # test harness does, as the launcher would)
    left = _segments() - segments - _mapped_segments()
    assert not left, left


def test_memory_monitor_ends_the_task_not_the_job(run_job):
    """The node's limit set 1 GiB above what it uses now: a task that allocates past it is
    ended with OutOfMemoryError naming it, and the next task runs."""
    used = psutil.virtual_memory().total - psutil.virtual_memory().available
    r, _ = run(run_job, job_file("isolation/memory.py"), n=2, timeout=180,
               env={"HPCRAY_MEMORY_LIMIT": str(used + 2**30)})
    kind, text = r["hog"]
    assert kind == "OutOfMemoryError" and "hog" in text and "MiB" in text, r
    assert r["after"] == 81, r


def test_node_store_maps_one_copy(run_job):
    """A 256 MiB result made in an executor on rank 1 is read by the driver, by a task on the
    same rank and by one on rank 2, each mapping the node-store segment (memfd) with no copy,
    read-only; a driver put reaches a task the same way."""
    r, _ = run(run_job, job_file("isolation/node_store.py"), timeout=240)
    for where, (mapping, total, writable) in [("driver", r["driver"]),
                                              ("same", r["same_rank"][1:]),
                                              ("other", r["other_rank"][1:])]:
        assert mapping.startswith("/memfd:hpcray-"), (where, r)
        assert total == r["expected"] and writable is False, (where, r)
    assert r["same_rank"][0] != r["other_rank"][0], r
    assert r["from_driver"].startswith("/memfd:hpcray-"), r


def test_freed_segments_are_reused_only_when_unmapped(run_job):
    """Eight 24 MiB objects put by the driver: freed segments are written again (the driver
    holds fewer segments than it made objects), but never one that a driver array or an
    actor's kept argument still views; every task reads exactly its own data."""
    r, _ = run(run_job, job_file("isolation/segment_reuse.py"), timeout=180)
    assert all(r["results"]) and len(r["results"]) == 6, r
    assert r["driver_view_intact"] and r["actor_view_intact"], r
    assert 2 <= r["segments_held_by_driver"] < r["objects"], r


def test_cpu_bound_tasks_run_in_parallel_processes(run_job, tmp_path):
    """One worker rank with 2 CPUs: two pure-Python tasks run at once, each in a process of
    its own (no shared GIL), neither in the rank."""
    r, _ = run(run_job, job_file("isolation/parallel.py"), n=2, timeout=120,
               env={"HPCRAY_CPUS_PER_RANK": "2"})
    assert r["ranks"] == 2
    (pid_a, rank_a, met_a), (pid_b, rank_b, met_b) = r["tasks"]
    assert rank_a == rank_b == 1 and pid_a != pid_b and met_a and met_b, r


def test_thread_mode_runs_tasks_in_the_rank(run_job):
    """HPCRAY_EXECUTION=thread: today's in-rank mode, tasks share the rank's process."""
    r, _ = run(run_job, job_file("isolation/parallel.py"), n=2, timeout=120,
               env={"HPCRAY_CPUS_PER_RANK": "2", "HPCRAY_EXECUTION": "thread"})
    (pid_a, _, met_a), (pid_b, _, met_b) = r["tasks"]
    assert pid_a == pid_b and met_a and met_b, r


def test_collectives_need_the_rank(run_job):
    """An actor declared out of its rank (in_rank=False) that uses a collective gets an error
    that says what to do; one that uses collectives runs in its rank without being told."""
    code = """
        import json
        import hpcray
        from hpcray import collective as col
        from jobkit import emit

        hpcray.init()


        @hpcray.remote
        class Member:
            def rank_pid(self):
                import os
                return os.getpid()

            def join(self, n, i):
                import numpy as np

                col.init_collective_group(n, i, backend="mpi", group_name="g")
                x = np.ones(1)
                col.allreduce(x, group_name="g")
                return float(x[0])


        out = {}
        members = [Member.remote() for _ in range(2)]
        out["joined"] = hpcray.get([m.join.remote(2, i) for i, m in enumerate(members)],
                                   timeout=60)
        loner = Member.options(in_rank=False).remote()
        try:
            hpcray.get(loner.join.remote(1, 0), timeout=60)
            out["error"] = None
        except Exception as exc:
            out["error"] = str(exc)
        emit(out)
    """
    r, _ = run(run_job, code, timeout=120)
    assert r["joined"] == [2, 2], r
    assert "in_rank=True" in r["error"] and "executor process" in r["error"], r
