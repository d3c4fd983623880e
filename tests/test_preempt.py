"""on_preempt outside Slurm: SIGTERM to a job under mpiexec runs the callbacks while the workers
still serve tasks, then ends every rank with status 128 + 15."""

from __future__ import annotations

import json
import time

import psutil

PREEMPTED_JOB = """
    import json
    import os
    import signal
    import threading
    import time

    import hpcray

    hpcray.init()
    here = os.path.dirname(os.path.abspath(__file__))


    @hpcray.remote
    def square(x):
        return x * x


    @hpcray.remote
    def pid():
        time.sleep(0.2)
        return os.getpid()


    pids = sorted(set(hpcray.get([pid.options(scheduling_strategy="SPREAD").remote()
                                  for _ in range(4)])))
    with open(os.path.join(here, "pids.json"), "w") as f:
        json.dump(pids + [os.getpid()], f)
    order = []


    @hpcray.on_preempt
    def first():
        order.append("first")
        raise RuntimeError("a failing callback does not stop the next one")


    @hpcray.on_preempt
    def checkpoint():
        # runs in its own thread while the driver is busy below; tasks still run
        value = hpcray.get(square.remote(7), timeout=30)
        order.append("checkpoint")
        with open(os.path.join(here, "checkpoint.json"), "w") as f:
            json.dump({"value": value, "order": order,
                       "thread": threading.current_thread().name}, f)


    threading.Timer(0.5, os.kill, args=(os.getpid(), signal.SIGTERM)).start()
    while True:  # the driver keeps working until the job is ended
        hpcray.get(square.remote(3))
        time.sleep(0.01)
"""


def test_sigterm_runs_callbacks_then_ends_the_job(run_job, tmp_path):
    proc = run_job(PREEMPTED_JOB, n=3, timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert "hpcray: SIGTERM received: running 2 on_preempt callback(s)" in proc.stderr
    assert "a failing callback does not stop the next one" in proc.stderr
    assert "hpcray: ending the job after SIGTERM" in proc.stderr
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved == {"value": 49, "order": ["first", "checkpoint"], "thread": "hpcray-preempt"}
    pids = json.loads((tmp_path / "pids.json").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if psutil.pid_exists(p)], "ranks outlived the job"


LONE_SIGTERM_JOB = """
    import os
    import signal
    import time

    import hpcray

    hpcray.init()


    @hpcray.remote
    def rank_pid():  # the rank's process (the task itself runs in an executor under it)
        rt = hpcray.get_runtime_context()._rt
        return rt.ranks[rt.rank].pid


    victim = hpcray.get(rank_pid.remote())
    os.kill(victim, signal.SIGTERM)   # a worker alone: it waits for the head, then gives up
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and victim not in [
            hpcray.get_runtime_context()._rt.ranks[r].pid
            for r in range(1, 3) if not hpcray.get_runtime_context()._rt.ranks[r].alive]:
        time.sleep(0.1)
    print("RESULT", victim, flush=True)
"""


def test_worker_outlives_sigterm_only_for_the_grace(run_job):
    proc = run_job(LONE_SIGTERM_JOB, n=3, timeout=60, env={"HPCRAY_PREEMPT_GRACE": "1"})
    assert "SIGTERM 1 s ago and the head has not ended the job; exiting" in proc.stderr
    victim = proc.stdout.split("RESULT", 1)[1].split()[0]
    assert f"(pid {victim} on" in proc.stderr and "died" in proc.stderr, proc.stderr
    assert proc.returncode != 0  # a rank died during the job
