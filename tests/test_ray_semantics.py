"""Ray's semantics where hpcray differed (each test failed before its fix)."""

from __future__ import annotations

import json
import sys

from conftest import mpiexec, run_process

GET_FIRST_ERROR_JOB = """
import json
import os
import time

import hpcray

hpcray.init()


@hpcray.remote
def fail():
    raise ValueError("first")


@hpcray.remote
def until(path):
    while not os.path.exists(path):
        time.sleep(0.01)
    return 1


R = {}
slow = until.remote("release")
bad = fail.remote()
try:
    hpcray.get([slow, bad], timeout=60)
    R["got"] = "no error"
except ValueError as exc:
    R["got"] = ["ValueError", str(exc)]
except hpcray.exceptions.GetTimeoutError:
    R["got"] = "timeout"
open("release", "w").close()
R["after"] = hpcray.get(slow)
print("RESULT " + json.dumps(R))
"""


def _result(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_get_raises_the_first_error_without_waiting_for_the_rest(run_job) -> None:
    """get([never_finishing, failed]) raises the failure at once (it waited for every ref;
    here the first ref only finishes after get returned, so waiting would time out)."""
    r = _result(run_job(GET_FIRST_ERROR_JOB, n=3, timeout=120))
    assert r["got"][0] == "ValueError" and "first" in r["got"][1]
    assert r["after"] == 1


def test_init_and_shutdown_from_python_c(tmp_path) -> None:
    """mpiexec -n 4 python -c "...init(); shutdown()" exits 0 (it was killed by signal 9)."""
    from hpcray._private.job.launch import mpiexec_command

    code = "import hpcray as ray; ray.init(); ray.shutdown(); print('BYE')"
    cmd, env = mpiexec_command(4, [sys.executable, "-c", code], mpiexec=mpiexec())
    for _ in range(3):
        proc = run_process(cmd, 60, env=env, cwd=str(tmp_path))
        assert proc.returncode == 0 and "BYE" in proc.stdout, proc.stderr


GPU_ENV_JOB = """
import json
import os

import hpcray

before = os.environ.get("CUDA_VISIBLE_DEVICES")
hpcray.init(num_gpus=1)
during = os.environ.get("CUDA_VISIBLE_DEVICES")
hpcray.shutdown()
print("RESULT " + json.dumps([before, during, os.environ.get("CUDA_VISIBLE_DEVICES")]))
"""


def test_shutdown_gives_back_the_drivers_gpu_environment(run_job) -> None:
    """init(num_gpus=1) narrows CUDA_VISIBLE_DEVICES for the session only."""
    for env in ({}, {"CUDA_VISIBLE_DEVICES": "3,1"}):
        proc = run_job(GPU_ENV_JOB, n=2, timeout=90, env=env)
        assert proc.returncode == 0, proc.stderr
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        before, during, after = json.loads(line[len("RESULT "):])
        assert after == before and during is not None, (before, during, after)


REINIT_SCRIPT = """
import os
import time

import psutil

import hpcray

pid = hpcray.remote(lambda: os.getpid())
sessions = []
for _ in range(3):
    hpcray.init(num_cpus=2)
    workers = set(hpcray.get([pid.remote() for _ in range(8)]))
    hpcray.shutdown()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
            psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
            for p in workers):
        time.sleep(0.05)
    sessions.append(sorted(p for p in workers if psutil.pid_exists(p)
                           and psutil.Process(p).status() != psutil.STATUS_ZOMBIE))
print("LEFT", sessions, flush=True)
"""


def test_interactive_init_shutdown_init(tmp_path) -> None:
    """In an interactive interpreter (python -i, notebooks), init(); shutdown() ends that
    session's workers at once, and init() works again, any number of times (the process was
    SIGKILLed ~30 s after the second init: the first session's workers never finalized)."""
    script = tmp_path / "reinit.py"
    script.write_text(REINIT_SCRIPT)
    proc = run_process([sys.executable, "-i", str(script)], 180, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LEFT [[], [], []]" in proc.stdout, proc.stdout + proc.stderr


STALE_SCRIPT = """
import json

import hpcray


@hpcray.remote
class Box:
    def __init__(self, v):
        self.v = v

    def get(self):
        return self.v


R = {}
hpcray.init(num_cpus=2)
old_ref = hpcray.put("session one")
old_actor = Box.remote("actor one")
hpcray.get(old_actor.get.remote())
hpcray.shutdown()

hpcray.init(num_cpus=2)
new_ref = hpcray.put("session two")  # the same position in the new session's counter
new_actor = Box.remote("actor two")
hpcray.get(new_actor.get.remote())
try:
    hpcray.get(old_ref, timeout=30)
    R["stale_get"] = "no error"
except ValueError as exc:
    R["stale_get"] = str(exc)
hpcray.kill(old_actor)  # touches nothing of this session
try:
    hpcray.get(old_actor.get.remote(), timeout=30)
    R["stale_call"] = "no error"
except hpcray.exceptions.ActorDiedError as exc:
    R["stale_call"] = "ActorDiedError"
del old_ref  # its release must not free the new session's object
R["new"] = [hpcray.get(new_ref), hpcray.get(new_actor.get.remote())]
hpcray.shutdown()
print("STALE " + json.dumps(R), flush=True)
"""


def test_refs_from_an_earlier_session_touch_nothing(tmp_path) -> None:
    """Ids restarted at 1 in every session: a ref or handle kept from before shutdown() freed
    or killed the object or actor with the same id in the next session."""
    script = tmp_path / "stale.py"
    script.write_text(STALE_SCRIPT)
    proc = run_process([sys.executable, "-i", str(script)], 180, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("STALE "))
    r = json.loads(line[len("STALE "):])
    assert "earlier hpcray session" in r["stale_get"]
    assert r["stale_call"] == "ActorDiedError"
    assert r["new"] == ["session two", "actor two"]


CANCEL_JOB = """
import json
import os
import time

import hpcray

hpcray.init()


@hpcray.remote
def until(path):
    while not os.path.exists(path):
        time.sleep(0.01)
    return 1


@hpcray.remote
def waits_nested(path):
    return hpcray.get(until.remote(path))  # blocks inside the runtime, driving its progress


outcomes = []
for i in range(10):
    ref = waits_nested.remote(f"never-{i}")
    time.sleep(0.05 * (i % 4))  # cancel at different points of the nested wait
    hpcray.cancel(ref)
    try:
        hpcray.get(ref, timeout=60)
        outcomes.append("finished")
    except hpcray.exceptions.TaskCancelledError:
        outcomes.append("cancelled")
    except hpcray.exceptions.GetTimeoutError:
        outcomes.append("hung")
    open(f"never-{i}", "w").close()  # let the inner task end
print("RESULT " + json.dumps(outcomes))
"""


def test_a_cancel_reaching_a_nested_wait_is_never_lost(run_job) -> None:
    """cancel() of a task blocked in a nested get: the exception used to fire inside the
    progress step the task's thread was driving, which swallowed it; the task then hung."""
    r = _result(run_job(CANCEL_JOB, n=3, timeout=240))
    assert r == ["cancelled"] * 10, r


ACTOR_API_JOB = """
import json

import hpcray
from hpcray.actor import exit_actor

hpcray.init()


@hpcray.remote
class Worker:
    LIMIT = 3

    def __init__(self):
        self.n = 0

    def step(self):
        self.n += 1
        return self.n

    def quit(self):
        try:
            exit_actor()
        except Exception:  # exit_actor is not an Exception: this must not stop it
            return "caught"


def outcome(ref):
    try:
        return ["ok", hpcray.get(ref, timeout=60)]
    except hpcray.exceptions.ActorDiedError as exc:
        return ["ActorDiedError", str(exc)]


R = {"class_attr": Worker.LIMIT}
a = Worker.remote()
R["ready"] = hpcray.get(a.__ray_ready__.remote())
R["steps"] = hpcray.get([a.step.remote() for _ in range(3)])
R["quit"] = outcome(a.quit.remote())
R["after_quit"] = outcome(a.step.remote())
b = Worker._remote(args=(), kwargs={}, name="b")
calls = [b.step.remote() for _ in range(2)]
b.__ray_terminate__.remote()  # after the calls queued before it
R["before_terminate"] = [outcome(r) for r in calls]
R["after_terminate"] = outcome(b.step.remote())
try:
    exit_actor()
    R["driver_exit"] = "no error"
except TypeError as exc:
    R["driver_exit"] = str(exc)
print("RESULT " + json.dumps(R))
"""


def test_actor_api(run_job) -> None:
    """exit_actor(), __ray_ready__, __ray_terminate__ (after the calls queued before it), class
    attributes through the actor class, ActorClass._remote, as Ray has them."""
    r = _result(run_job(ACTOR_API_JOB, n=3, timeout=120))
    assert r["class_attr"] == 3 and r["ready"] is True and r["steps"] == [1, 2, 3]
    assert r["quit"][0] == "ActorDiedError" and "exit_actor" in r["quit"][1]
    assert r["after_quit"][0] == "ActorDiedError" and "exit_actor" in r["after_quit"][1]
    assert r["before_terminate"] == [["ok", 1], ["ok", 2]]
    assert r["after_terminate"][0] == "ActorDiedError"
    assert "inside an actor" in r["driver_exit"]


MISC_JOB = """
import json
import sys

import hpcray

hpcray.init(namespace="team-a")


@hpcray.remote
class Named:
    def where(self):
        return hpcray.get_runtime_context().namespace


@hpcray.remote(max_retries=0)
def leaves():
    sys.exit(3)


R = {}
a = Named.options(name="svc").remote()
b = Named.options(name="svc", namespace="team-b").remote()  # the same name elsewhere: fine
R["same_ns"] = hpcray.get(hpcray.get_actor("svc").where.remote())
R["other_ns"] = hpcray.get(hpcray.get_actor("svc", namespace="team-b").where.remote())
try:
    hpcray.get_actor("svc", namespace="team-c")
    R["missing"] = "found"
except ValueError as exc:
    R["missing"] = str(exc)
try:
    Named.options(name="svc").remote()
    R["taken"] = "created"
except ValueError as exc:
    R["taken"] = str(exc)
R["available"] = hpcray.available_resources()
try:
    hpcray.get(leaves.remote())
    R["exit"] = "no error"
except hpcray.exceptions.WorkerCrashedError as exc:
    R["exit"] = ["WorkerCrashedError", str(exc)]
except Exception as exc:
    R["exit"] = [type(exc).__name__, str(exc)]
print("RESULT " + json.dumps(R))
"""


def test_namespaces_resources_and_sys_exit(run_job) -> None:
    """Named actors live in namespaces (init(namespace=), options(namespace=),
    get_actor(namespace=)); available_resources() leaves out what is at zero; sys.exit() in a
    task is a worker failure (WorkerCrashedError), not a TaskError of SystemExit."""
    r = _result(run_job(MISC_JOB, n=3, timeout=120))
    assert r["same_ns"] == "team-a"  # the actor's rank runs in the job's namespace
    assert r["other_ns"] == "team-a"
    assert "team-c" in r["missing"] and "already exists" in r["taken"]
    assert all(v > 0 for v in r["available"].values()) and r["available"].get("CPU", 0) > 0
    assert r["exit"][0] == "WorkerCrashedError" and "sys.exit(3)" in r["exit"][1]


def test_a_driver_only_session(tmp_path) -> None:
    """init(num_cpus=0): the driver alone; puts work, a task says why it cannot run."""
    script = tmp_path / "alone.py"
    script.write_text(
        "import hpcray\n"
        "hpcray.init(num_cpus=0)\n"
        "print('PUT', hpcray.get(hpcray.put(41)) + 1)\n"
        "try:\n"
        "    hpcray.get(hpcray.remote(lambda: 1).remote(), timeout=30)\n"
        "except hpcray.exceptions.InfeasibleError as exc:\n"
        "    print('TASK InfeasibleError', exc)\n")
    proc = run_process([sys.executable, str(script)], 120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "PUT 42" in proc.stdout and "TASK InfeasibleError" in proc.stdout, proc.stdout


RETRY_AFTER_RANK_DEATH_JOB = """
import json
import os

import hpcray

hpcray.init()
marker = os.path.abspath("died-once")


@hpcray.remote(max_retries=1)
def dies_once(path):
    if not os.path.exists(path):
        open(path, "w").write(str(hpcray.get_runtime_context().get_rank()))
        os._exit(1)  # the rank dies while running the task
    return hpcray.get_runtime_context().get_rank()


@hpcray.remote(max_retries=0)
def dies_always(path):
    os._exit(1)


R = {"retried_on": hpcray.get(dies_once.remote(marker), timeout=60)}
R["died_on"] = int(open(marker).read())
try:
    hpcray.get(dies_always.remote(marker), timeout=60)
    R["no_retry"] = "no error"
except hpcray.exceptions.WorkerCrashedError as exc:
    R["no_retry"] = "WorkerCrashedError"
print("RESULT " + json.dumps(R), flush=True)
"""


def test_a_task_is_retried_after_its_rank_dies(run_job) -> None:
    """A rank that dies running a task (here by exiting, which MPICH's Hydra survives with
    -disable-auto-cleanup): the task runs again on a live rank (max_retries), and a task
    without retries left fails with WorkerCrashedError. The job then exits non-zero (ranks
    died), after the driver had its results. Thread mode: the task runs in the rank itself
    (in process mode only its executor would die: tests/test_isolation.py)."""
    proc = run_job(RETRY_AFTER_RANK_DEATH_JOB, n=4, timeout=120,
                   env={"HPCRAY_EXECUTION": "thread"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stdout + proc.stderr
    r = json.loads(line[len("RESULT "):])
    assert r["retried_on"] != r["died_on"] and r["retried_on"] in (1, 2, 3), r
    assert r["no_retry"] == "WorkerCrashedError", r
    assert proc.returncode != 0
