"""End-to-end tests of whole hpcray jobs: scheduling, faults, idle CPU, launching, bad input.

Every check runs in a real MPI job. Starting a job costs about a second, so related checks share
one job whose script prints a single ``RESULT {json}`` line; the tests assert on that dict (a
failing check names itself). Jobs shared by several tests run once per module.

The only time bounds are the hard ones hpcray promises (a failed job ends within 30 s); CPU use
is measured as CPU time, never as wall-clock time.

"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import kill_all, mpiexec, run_process

RunJob = Callable[..., subprocess.CompletedProcess]

#: hpcray's hard bound for a failed job (driver exception, dead rank) to end completely
FAIL_BOUND_S = 30


# -- helpers ---------------------------------------------------------------------------------
def _output(proc: subprocess.CompletedProcess) -> str:
    return f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def _result(proc: subprocess.CompletedProcess, status: int | None = 0) -> dict[str, Any]:
    """The dict a job printed after ``RESULT ``; checks the exit status unless status is None."""
    if status is not None:
        assert proc.returncode == status, _output(proc)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, _output(proc)
    return json.loads(lines[0][len("RESULT "):])


def _survivors(marker: str) -> list[psutil.Process]:
    """Live processes whose command line mentions marker (a job's script path)."""
    found = {}
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = proc.info["cmdline"] or []
            if any(marker in arg for arg in cmdline):
                found[proc.pid] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            continue
    return out


def _leftovers(marker: str, until: float | None = None) -> list[str]:
    """Processes of a finished job still alive at ``until`` (monotonic time, default: now).

    Whatever is found is killed so that a failing test leaves nothing running.
    """
    while True:
        alive = _survivors(marker)
        if not alive or until is None or time.monotonic() >= until:
            break
        time.sleep(0.1)
    described = _describe(alive)
    kill_all(alive)
    return described


@pytest.fixture
def script_path(tmp_path: Path) -> str:
    """The path run_job writes the job's script to (unique per test)."""
    return str(tmp_path / "job.py")


@pytest.fixture
def cleanup(script_path: str):
    """Kills whatever a test's job left running, even when the test fails."""
    yield
    kill_all(_survivors(script_path))


def _shared_job(tmp_path_factory: pytest.TempPathFactory, name: str, code: str, n: int = 3,
                env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs a job once for a module-scoped fixture, as run_job would."""
    workdir = tmp_path_factory.mktemp(name)
    script = workdir / "job.py"
    script.write_text(textwrap.dedent(code))
    cmd = [mpiexec(), "-n", str(n), "-disable-auto-cleanup", sys.executable, str(script)]
    try:
        return run_process(cmd, timeout, env=env, cwd=str(workdir))
    finally:
        kill_all(_survivors(str(script)))


# -- 1. scheduling ---------------------------------------------------------------------------
SCHEDULING_JOB = """
    import json
    import os
    import time
    import uuid

    import hpcray
    from hpcray.util import (NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy,
                             placement_group, remove_placement_group)

    hpcray.init()
    HERE = os.path.dirname(os.path.abspath(__file__))
    out = {}


    def rank():
        return hpcray.get_runtime_context().get_rank()


    def caught(fn):
        try:
            fn()
        except Exception as exc:
            return {"type": type(exc).__name__, "message": str(exc),
                    "hpcray_error": isinstance(exc, hpcray.exceptions.HpcrayError)}
        return None


    @hpcray.remote
    def where(delay=0.0):
        time.sleep(delay)
        return rank()


    @hpcray.remote
    def interval(delay):
        start = time.time()
        time.sleep(delay)
        return [rank(), start, time.time()]


    out["cluster"] = hpcray.cluster_resources()
    out["available_at_start"] = hpcray.available_resources()

    # -- a task that can never fit: an error at submission, and the job goes on
    try:
        where.options(num_cpus=2).remote()
        out["infeasible"] = {"raised_at": "nowhere"}
    except Exception as exc:
        out["infeasible"] = {"raised_at": "remote", "type": type(exc).__name__,
                             "message": str(exc),
                             "hpcray_error": isinstance(exc, hpcray.exceptions.HpcrayError)}
    out["after_infeasible"] = hpcray.get(where.remote(), timeout=30)

    # -- custom resources (HPCRAY_RESOURCES='{"accel": 1}' on every worker rank); a quarter CPU
    #    each, so only "accel" limits how many run at once
    accel = interval.options(num_cpus=0.25, resources={"accel": 1})
    out["accel"] = hpcray.get([accel.remote(0.2) for _ in range(6)], timeout=60)
    out["accel_available_after"] = hpcray.available_resources().get("accel")

    # -- fractional CPUs: 4 tasks of half a CPU on 2 one-CPU ranks all run at once. A file
    #    barrier (no nested get, which would lend the CPU away) proves it.
    barrier = os.path.join(HERE, "barrier")
    os.mkdir(barrier)


    @hpcray.remote(num_cpus=0.5)
    def half(path, n):
        open(os.path.join(path, uuid.uuid4().hex), "w").close()
        deadline = time.monotonic() + 30
        while len(os.listdir(path)) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return [rank(), len(os.listdir(path))]


    out["half"] = hpcray.get([half.remote(barrier, 4) for _ in range(4)], timeout=60)

    # -- SPREAD, with whole and with quarter CPUs (DEFAULT with quarter CPUs for comparison)
    spread = where.options(scheduling_strategy="SPREAD")
    out["spread"] = hpcray.get([spread.remote(0.2) for _ in range(2)], timeout=30)
    spread = where.options(scheduling_strategy="SPREAD", num_cpus=0.25)
    out["spread_quarter"] = hpcray.get([spread.remote(0.2) for _ in range(4)], timeout=30)
    default = where.options(num_cpus=0.25)
    out["default_quarter"] = hpcray.get([default.remote(0.2) for _ in range(4)], timeout=30)

    # -- node affinity
    node = hpcray.nodes()[0]
    out["node"] = {"id": node["NodeID"], "ranks": node["Ranks"]}


    @hpcray.remote
    def node_and_rank():
        return [hpcray.get_runtime_context().get_node_id(), rank()]


    hard = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
    out["affinity"] = hpcray.get(
        [node_and_rank.options(scheduling_strategy=hard).remote() for _ in range(4)], timeout=30)
    missing_hard = NodeAffinitySchedulingStrategy("no-such-node", soft=False)
    out["affinity_unknown_hard"] = caught(lambda: hpcray.get(
        where.options(scheduling_strategy=missing_hard).remote(), timeout=10))
    missing_soft = NodeAffinitySchedulingStrategy("no-such-node", soft=True)
    out["affinity_unknown_soft"] = hpcray.get(
        where.options(scheduling_strategy=missing_soft).remote(), timeout=30)

    # -- placement groups
    out["strict_spread"] = caught(lambda: placement_group([{"CPU": 1}, {"CPU": 1}],
                                                          strategy="STRICT_SPREAD"))
    for strategy in ("PACK", "SPREAD"):
        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy=strategy)
        ready = hpcray.get(pg.ready(), timeout=30)
        waited = pg.wait(5)
        held = hpcray.available_resources().get("CPU", 0.0)
        bundles = [[hpcray.get(where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, index)).remote(), timeout=30) for _ in range(3)] for index in range(2)]
        # every CPU is reserved: a plain task has to wait until the group is removed
        plain = where.remote()
        plain_ready_while_held = len(hpcray.wait([plain], timeout=1.0)[0])
        remove_placement_group(pg)
        plain_rank = hpcray.get(plain, timeout=30)
        out["pg_" + strategy] = {
            "ready": ready, "wait": waited, "cpu_while_held": held, "bundles": bundles,
            "plain_ready_while_held": plain_ready_while_held, "plain_rank": plain_rank,
            "cpu_after_remove": hpcray.available_resources().get("CPU"),
        }

    pg = placement_group([{"CPU": 1}], strategy="PACK")
    ready = pg.wait(5)
    inside = PlacementGroupSchedulingStrategy(pg, 0)
    in_refs = [where.options(scheduling_strategy=inside).remote(0.05) for _ in range(4)]
    out_refs = [where.remote(0.05) for _ in range(4)]
    out["pg_one_bundle"] = {"ready": ready, "inside": hpcray.get(in_refs, timeout=30),
                            "outside": hpcray.get(out_refs, timeout=30)}
    remove_placement_group(pg)
    out["pg_one_bundle"]["cpu_after_remove"] = hpcray.available_resources().get("CPU")
    out["pg_removed_submit"] = caught(lambda: hpcray.get(
        where.options(scheduling_strategy=inside).remote(), timeout=10))

    # -- queueing: 20 tasks of 0.1 s on 2 CPUs
    before = hpcray.available_resources()
    refs = [interval.remote(0.1) for _ in range(20)]
    during = hpcray.available_resources()
    out["queue"] = {"before": before, "during": during, "results": hpcray.get(refs, timeout=60),
                    "after": hpcray.available_resources()}

    print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def scheduling(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    proc = _shared_job(tmp_path_factory, "scheduling", SCHEDULING_JOB,
                       env={"HPCRAY_RESOURCES": '{"accel": 1}'})
    return _result(proc)


def _max_overlap(intervals: list[list[float]]) -> int:
    """The largest number of [start, end] intervals that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def _disjoint_per_rank(results: list[list[float]]) -> dict[int, bool]:
    """For each rank, whether the [rank, start, end] intervals it ran never overlap."""
    by_rank: dict[int, list[tuple[float, float]]] = {}
    for rank, start, end in results:
        by_rank.setdefault(int(rank), []).append((start, end))
    return {rank: all(a[1] <= b[0] for a, b in zip(sorted(iv), sorted(iv)[1:]))
            for rank, iv in by_rank.items()}


def test_infeasible_num_cpus_fails_at_submission_and_says_what_to_do(scheduling):
    err = scheduling["infeasible"]
    assert err["raised_at"] == "remote", err
    message = err["message"]
    assert "'CPU': 2.0" in message, message            # what was asked
    assert "'CPU': 1.0" in message, message            # what the largest rank has
    assert any(hint in message.lower() for hint in ("request less", "start the job")), message
    assert scheduling["after_infeasible"] in (1, 2)    # the job goes on


def test_infeasible_error_is_a_public_hpcray_exception(scheduling):
    assert scheduling["infeasible"]["hpcray_error"], scheduling["infeasible"]


def test_custom_resources_limit_concurrency(scheduling):
    assert scheduling["cluster"]["accel"] == 2.0
    assert scheduling["cluster"]["CPU"] == 2.0
    results = scheduling["accel"]
    assert len(results) == 6
    assert {r[0] for r in results} == {1, 2}
    # one "accel" per rank: a rank never runs two of them at once, the job never more than 2
    assert all(_disjoint_per_rank(results).values()), results
    assert _max_overlap([r[1:] for r in results]) <= 2, results
    assert scheduling["accel_available_after"] == 2.0


def test_fractional_cpus_let_two_tasks_share_a_rank(scheduling):
    half = scheduling["half"]
    # every task saw all 4 arrive at the barrier: the 4 ran at the same time, 2 on each rank
    assert [count for _, count in half] == [4, 4, 4, 4], half
    assert Counter(rank for rank, _ in half) == {1: 2, 2: 2}, half


def test_spread_uses_both_ranks(scheduling):
    assert sorted(scheduling["spread"]) == [1, 2], scheduling["spread"]
    assert set(scheduling["default_quarter"]) == {1, 2}, scheduling["default_quarter"]


def test_spread_with_fractional_cpus_uses_both_ranks(scheduling):
    assert set(scheduling["spread_quarter"]) == {1, 2}, scheduling["spread_quarter"]


def test_node_affinity(scheduling):
    node = scheduling["node"]
    for node_id, rank in scheduling["affinity"]:
        assert node_id == node["id"]
        assert rank in node["ranks"] and rank != 0
    err = scheduling["affinity_unknown_hard"]
    assert err is not None, "a hard affinity to an unknown node ran"
    assert "no-such-node" in err["message"], err
    assert scheduling["affinity_unknown_soft"] in (1, 2)


def test_strict_spread_on_one_node_is_infeasible(scheduling):
    err = scheduling["strict_spread"]
    assert err is not None, "STRICT_SPREAD of 2 bundles on a 1-node job was accepted"
    assert "STRICT_SPREAD" in err["message"], err


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD"])
def test_placement_group_reserves_bundles_on_ranks(scheduling, strategy):
    pg = scheduling["pg_" + strategy]
    assert pg["ready"] is True and pg["wait"] is True, pg
    assert pg["cpu_while_held"] == 0.0, pg
    # each bundle's tasks all run on its rank; the two bundles are on the two ranks
    ranks = [set(bundle) for bundle in pg["bundles"]]
    assert all(len(r) == 1 for r in ranks), pg
    assert ranks[0] | ranks[1] == {1, 2}, pg
    # a plain task waits while the group holds every CPU, and runs once it is removed
    assert pg["plain_ready_while_held"] == 0, pg
    assert pg["plain_rank"] in (1, 2), pg
    assert pg["cpu_after_remove"] == 2.0, pg


def test_placement_group_bundle_pins_its_rank(scheduling):
    pg = scheduling["pg_one_bundle"]
    assert pg["ready"] is True
    inside, outside = set(pg["inside"]), set(pg["outside"])
    assert len(inside) == 1, pg                 # the bundle's rank
    assert outside == {1, 2} - inside, pg       # plain tasks: only the unreserved rank has a CPU
    assert pg["cpu_after_remove"] == 2.0, pg
    assert scheduling["pg_removed_submit"] is not None, "a task ran in a removed placement group"


def test_queued_tasks_all_finish_and_resources_come_back(scheduling):
    queue = scheduling["queue"]
    results = queue["results"]
    assert len(results) == 20
    assert {r[0] for r in results} == {1, 2}
    assert all(_disjoint_per_rank(results).values()), results   # one CPU per rank
    assert queue["before"]["CPU"] == 2.0
    assert "CPU" not in queue["during"]  # nothing free: left out, as Ray does
    assert queue["after"] == queue["before"]


# -- 2. faults -------------------------------------------------------------------------------
FAULTS_JOB = """
    import json
    import os
    import time

    import hpcray
    from hpcray.exceptions import GetTimeoutError, TaskCancelledError, TaskError

    hpcray.init()
    HERE = os.path.dirname(os.path.abspath(__file__))
    out = {}


    def outcome(ref, timeout=30):
        try:
            return ["value", hpcray.get(ref, timeout=timeout)]
        except Exception as exc:
            return [type(exc).__name__, isinstance(exc, TimeoutError),
                    isinstance(exc, TaskCancelledError)]


    @hpcray.remote
    def boom():
        raise ValueError("boom from a task")


    try:
        hpcray.get(boom.remote())
        out["task_error"] = "no error"
    except ValueError as exc:
        out["task_error"] = [isinstance(exc, TaskError), "boom from a task" in str(exc)]


    @hpcray.remote(max_retries=0)
    def loop(name, rounds):
        open(os.path.join(HERE, name), "w").close()
        for _ in range(rounds):
            time.sleep(0.05)
        return name


    def wait_started(name):
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(HERE, name)) and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.path.exists(os.path.join(HERE, name))


    running = [loop.remote("r0", 400), loop.remote("r1", 400)]
    out["started"] = [wait_started("r0"), wait_started("r1")]
    queued = loop.remote("q", 1)              # no CPU left: it waits in the head's queue
    hpcray.cancel(queued)
    out["cancel_queued"] = outcome(queued)
    out["queued_never_ran"] = not os.path.exists(os.path.join(HERE, "q"))
    out["get_timeout"] = outcome(running[0], timeout=0.3)
    for ref in running:
        hpcray.cancel(ref)
    out["cancel_running"] = [outcome(ref) for ref in running]
    out["available_after"] = hpcray.available_resources()["CPU"]
    out["after"] = hpcray.get([loop.remote("after", 0) for _ in range(4)], timeout=30)
    print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _result(_shared_job(tmp_path_factory, "faults", FAULTS_JOB))


def test_task_error_is_caught_by_the_driver(faults):
    # the job itself exits 0 (checked by the fixture)
    assert faults["task_error"] == [True, True]


def test_cancel_queued_task(faults):
    assert faults["started"] == [True, True]
    assert faults["cancel_queued"][0] == "TaskCancelledError", faults["cancel_queued"]
    assert faults["queued_never_ran"] is True


def test_cancel_running_tasks(faults):
    for result in faults["cancel_running"]:
        assert result[0] == "TaskCancelledError", faults["cancel_running"]
    assert faults["available_after"] == 2.0
    assert faults["after"] == ["after"] * 4


def test_get_timeout(faults):
    name, is_timeout_error, _ = faults["get_timeout"]
    assert name == "GetTimeoutError"
    assert is_timeout_error


DRIVER_RAISES = """
    import time
    import hpcray

    hpcray.init()


    @hpcray.remote
    def work():
        {body}


    refs = [work.remote() for _ in range(2)]
    {wait}
    raise RuntimeError("the driver failed on purpose")
"""


def test_driver_exception_fails_the_job_fast(run_job: RunJob, script_path: str, cleanup) -> None:
    start = time.monotonic()
    code = DRIVER_RAISES.format(body="return 1", wait="assert hpcray.get(refs) == [1, 1]")
    proc = run_job(code, n=3, timeout=FAIL_BOUND_S)
    assert proc.returncode != 0, _output(proc)
    assert "Traceback" in proc.stderr and "the driver failed on purpose" in proc.stderr, \
        _output(proc)
    assert _leftovers(script_path, until=start + FAIL_BOUND_S) == []


def test_driver_exception_fails_the_job_fast_while_tasks_run(run_job: RunJob, script_path: str,
                                                             cleanup) -> None:
    start = time.monotonic()
    code = DRIVER_RAISES.format(body="while True:\n            time.sleep(0.05)",
                                wait="time.sleep(0.5)")
    proc = run_job(code, n=3, timeout=FAIL_BOUND_S)
    assert proc.returncode != 0, _output(proc)
    assert "the driver failed on purpose" in proc.stderr, _output(proc)
    assert _leftovers(script_path, until=start + FAIL_BOUND_S) == []


SIGKILL_JOB = """
    import json
    import os
    import signal
    import sys
    import time

    import hpcray

    hpcray.init()
    HERE = os.path.dirname(os.path.abspath(__file__))


    @hpcray.remote
    def where():
        time.sleep(0.05)
        return [hpcray.get_runtime_context().get_rank(), os.getpid()]


    pids = {}
    deadline = time.monotonic() + 20
    while len(pids) < 2 and time.monotonic() < deadline:
        pids.update(dict(hpcray.get([where.options(scheduling_strategy="SPREAD").remote()
                                     for _ in range(4)])))


    @hpcray.remote(max_retries=0)
    def victim(path):
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        while True:
            time.sleep(0.05)


    flag = os.path.join(HERE, "victim.pid")
    ref = victim.remote(flag)
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(flag) as f:
        victim_pid = int(f.read())
    print("RESULT " + json.dumps({"driver": os.getpid(), "workers": pids, "victim": victim_pid}),
          flush=True)
    os.kill(victim_pid, signal.SIGKILL)
    try:
        hpcray.get(ref, timeout=20)
        sys.stdout.write("OUTCOME no error\\n")
    except Exception as exc:
        sys.stdout.write("OUTCOME " + type(exc).__name__ + "\\n")
    after = hpcray.get([where.remote() for _ in range(4)], timeout=60)
    sys.stdout.write("AFTER " + json.dumps(after) + "\\n")
    sys.stdout.flush()
"""


@pytest.mark.parametrize("execution", ["process", "thread"])
def test_killed_worker_fails_its_task_and_the_job_goes_on(
        run_job: RunJob, script_path: str, cleanup, execution: str) -> None:
    """process: the task's executor dies (its rank lives on); thread: the rank itself dies
    (the launcher's shell wrapper keeps Hydra from killing the others). Either way the task
    fails with WorkerCrashedError and later tasks run. The job exits 0 when only an executor
    died, and non-zero (after the driver finished) when it lost a rank."""
    start = time.monotonic()
    proc = run_job(SIGKILL_JOB, n=3, timeout=FAIL_BOUND_S, env={"HPCRAY_EXECUTION": execution})
    info = _result(proc, status=0 if execution == "process" else None)
    assert sorted(info["workers"]) == ["1", "2"], _output(proc)
    assert info["victim"] in info["workers"].values(), _output(proc)
    outcome = re.findall(r"^OUTCOME (no error|[A-Za-z]+Error)", proc.stdout, re.MULTILINE)
    assert outcome == ["WorkerCrashedError"], _output(proc)
    (after,) = re.findall(r"^AFTER (.*)$", proc.stdout, re.MULTILINE)
    after = json.loads(after)
    assert len(after) == 4, _output(proc)
    if execution == "process":  # a new executor replaced the dead one
        assert info["victim"] not in [pid for _, pid in after], _output(proc)
    else:  # the dead rank is out of the job
        dead = [rank for rank, pid in info["workers"].items() if pid == info["victim"]]
        assert {str(rank) for rank, _ in after}.isdisjoint(dead), _output(proc)
        assert proc.returncode != 0 and "died during the job" in proc.stderr, _output(proc)
    # every rank (driver and workers run the script) and mpiexec are gone
    assert _leftovers(script_path, until=start + FAIL_BOUND_S) == [], _output(proc)


def test_driver_may_exit_with_tasks_in_flight(run_job: RunJob, cleanup) -> None:
    code = """
        import time
        import hpcray

        hpcray.init()


        @hpcray.remote(num_cpus=0.01)
        def sleepy(seconds):
            time.sleep(seconds)


        refs = [sleepy.remote(0.01 * i) for i in range(200)]
        time.sleep(0.2)
        print("RESULT {}", flush=True)
    """
    proc = run_job(code, n=3, timeout=60)
    _result(proc, status=0)


def test_cancel_while_a_failed_task_is_reported(run_job: RunJob, cleanup) -> None:
    code = """
        import json
        import os
        import time

        import hpcray

        hpcray.init()
        marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "raising")


        @hpcray.remote(max_retries=0)
        def fails(marker):
            # a long chain of causes: formatting the traceback takes about a second
            exc = None
            for i in range(20000):
                try:
                    raise ValueError(i) from exc
                except ValueError as err:
                    exc = err
            open(marker, "w").close()
            raise exc


        ref = fails.remote(marker)
        deadline = time.monotonic() + 30
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.005)
        hpcray.cancel(ref)
        try:
            hpcray.get(ref, timeout=30)
            outcome = "value"
        except ValueError:
            outcome = "task error"
        except Exception as exc:
            outcome = type(exc).__name__
        print("RESULT " + json.dumps({"outcome": outcome}), flush=True)
    """
    proc = run_job(code, n=3, timeout=90)
    info = _result(proc, status=None)
    assert info["outcome"] in ("TaskCancelledError", "task error"), info
    assert proc.returncode == 0, _output(proc)


# -- 3. idle CPU -----------------------------------------------------------------------------
IDLE_JOB = """
    import json
    import os
    import time

    import psutil

    import hpcray

    hpcray.init()


    @hpcray.remote
    def where():
        time.sleep(0.2)
        rt = hpcray.get_runtime_context()
        return [rt.get_rank(), rt._rt.ranks[rt.get_rank()].pid, os.getpid()]


    pids, executors = {0: os.getpid()}, {}
    deadline = time.monotonic() + 30
    while len(pids) < 5 and time.monotonic() < deadline:
        for rank, pid, executor in hpcray.get([where.remote() for _ in range(8)]):
            pids[rank] = pid
            executors[f"executor {executor} of rank {rank}"] = executor

    time.sleep(3)   # idle: nothing submitted, nothing running (executors started, idle)
    procs = {rank: psutil.Process(pid) for rank, pid in {**pids, **executors}.items()}


    def cpu_seconds(proc):
        times = proc.cpu_times()
        return times.user + times.system


    def wakeups(proc):  # every thread's voluntary context switches: each sleep that ended
        total = 0
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            try:
                with open(f"/proc/{proc.pid}/task/{task}/status") as f:
                    total += sum(int(line.split()[1]) for line in f
                                 if line.startswith("voluntary_ctxt_switches"))
            except OSError:  # a thread that ended meanwhile
                pass
        return total


    before = {rank: (cpu_seconds(p), wakeups(p)) for rank, p in procs.items()}
    t0 = time.monotonic()
    time.sleep(2)
    elapsed = time.monotonic() - t0
    after = {rank: (cpu_seconds(p), wakeups(p)) for rank, p in procs.items()}
    percent = {rank: 100.0 * (after[rank][0] - before[rank][0]) / elapsed for rank in procs}
    woke = {rank: (after[rank][1] - before[rank][1]) / elapsed for rank in procs}
    print("RESULT " + json.dumps({"pids": pids, "executors": len(executors),
                                  "percent": percent, "wakeups_per_s": woke}), flush=True)
"""


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _result(_shared_job(tmp_path_factory, "idle", IDLE_JOB, n=5))


def test_idle_job_measures_every_rank(idle):
    assert sorted(idle["pids"]) == ["0", "1", "2", "3", "4"], idle
    assert len(set(idle["pids"].values())) == 5, idle
    assert idle["executors"] >= 4, idle  # at least one executor per worker rank, measured too
    assert {"0", "1", "2", "3", "4"} <= set(idle["percent"]), idle


def test_idle_ranks_sleep_between_polls(idle):
    """Idle, a rank's progress loop sleeps HPCRAY_BACKOFF's idle delay (5 ms) between polls and
    its other threads wait on events: at most ~200 wake-ups a second (counted by the kernel,
    so a loaded machine cannot fail this); an idle executor blocks on its socket (none). The
    CPU percent is reported alongside; under 5 % per rank on a quiet machine."""
    busy = {rank: round(n) for rank, n in idle["wakeups_per_s"].items()
            if n > (300 if rank.isdigit() else 20)}
    assert busy == {}, (f"wake-ups per second: {idle['wakeups_per_s']}; "
                        f"CPU %: {idle['percent']}")


# -- 4. launching ----------------------------------------------------------------------------
ARGV_SCRIPT = """
    import json
    import sys

    import hpcray

    hpcray.init()


    @hpcray.remote
    def rank():
        return hpcray.get_runtime_context().get_rank()


    print("RESULT " + json.dumps({
        "argv": sys.argv, "name": __name__,
        "world": hpcray.get_runtime_context().get_world_size(),
        "ranks": sorted(set(hpcray.get([rank.remote() for _ in range(6)]))),
    }), flush=True)
"""


def _write(tmp_path: Path, code: str, name: str = "job.py") -> str:
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    return str(script)


def test_cli_run_passes_arguments(tmp_path: Path, cleanup) -> None:
    script = _write(tmp_path, ARGV_SCRIPT)
    proc = run_process([sys.executable, "-m", "hpcray.cli", "run", "-n", "3", "--", script,
                        "first", "--flag"], timeout=120, cwd=str(tmp_path))
    info = _result(proc)
    assert info["argv"] == [script, "first", "--flag"]
    assert info["name"] == "__main__"
    assert info["world"] == 3
    assert info["ranks"] == [1, 2]


def test_python_m_hpcray_under_mpiexec(tmp_path: Path, cleanup) -> None:
    script = _write(tmp_path, ARGV_SCRIPT)
    proc = run_process([mpiexec(), "-n", "3", "-disable-auto-cleanup", sys.executable, "-m",
                        "hpcray", script, "x"], timeout=120, cwd=str(tmp_path))
    info = _result(proc)
    assert info["argv"] == [script, "x"]
    assert info["name"] == "__main__"
    assert info["world"] == 3
    assert info["ranks"] == [1, 2]


EMBEDDED_SCRIPT = """
    import json
    import sys

    import hpcray

    hpcray.init(num_cpus=2)


    @hpcray.remote
    def rank():
        return hpcray.get_runtime_context().get_rank()


    print("RESULT " + json.dumps({
        "argv": sys.argv[1:], "cluster": hpcray.cluster_resources(),
        "ranks": sorted(set(hpcray.get([rank.remote() for _ in range(6)]))),
    }), flush=True)
    if "fail" in sys.argv:
        raise RuntimeError("embedded script failed on purpose")
"""


def test_plain_python_relaunches_with_num_cpus(run_job: RunJob, script_path: str,
                                               cleanup) -> None:
    start = time.monotonic()
    proc = run_job(EMBEDDED_SCRIPT, spawn=True, args=["ok"])
    info = _result(proc)
    assert info["argv"] == ["ok"]
    assert info["cluster"]["CPU"] == 2
    assert info["ranks"] == [1, 2]
    assert _leftovers(script_path, until=start + FAIL_BOUND_S) == []


def test_plain_python_failing_script_exits_non_zero(run_job: RunJob, script_path: str,
                                                    cleanup) -> None:
    start = time.monotonic()
    proc = run_job(EMBEDDED_SCRIPT, spawn=True, args=["fail"], timeout=FAIL_BOUND_S)
    info = _result(proc, status=None)
    assert info["cluster"]["CPU"] == 2
    assert proc.returncode != 0, _output(proc)
    assert "embedded script failed on purpose" in proc.stderr, _output(proc)
    assert _leftovers(script_path, until=start + FAIL_BOUND_S) == []


# -- 5. bad input ----------------------------------------------------------------------------
BAD_INPUT_JOB = """
    import json
    import math

    import hpcray

    hpcray.init()
    out = {}


    def caught(fn):
        try:
            fn()
        except Exception as exc:
            return [type(exc).__name__, str(exc)]
        return None


    def f():
        return 1


    class C:
        pass


    task = hpcray.remote(f)
    out["num_cpus_negative"] = caught(lambda: hpcray.remote(num_cpus=-1)(f))
    out["num_cpus_negative_options"] = caught(lambda: task.options(num_cpus=-1))
    out["num_cpus_negative_actor"] = caught(lambda: hpcray.remote(num_cpus=-1)(C))
    out["num_cpus_nan"] = caught(lambda: hpcray.remote(num_cpus=math.nan)(f))
    out["unknown_option"] = caught(lambda: hpcray.remote(bogus_option=3)(f))
    out["unknown_option_options"] = caught(lambda: task.options(bogus_option=3))
    out["unknown_option_actor"] = caught(lambda: hpcray.remote(bogus_option=3)(C))
    out["get_int"] = caught(lambda: hpcray.get(42))
    out["get_list_of_int"] = caught(lambda: hpcray.get([42]))
    out["wait_too_many"] = caught(lambda: hpcray.wait([task.remote()], num_returns=2))
    out["kill_task"] = caught(lambda: hpcray.kill(task))
    out["kill_int"] = caught(lambda: hpcray.kill(42))
    out["still_works"] = hpcray.get(task.remote(), timeout=30)
    print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def bad_input(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _result(_shared_job(tmp_path_factory, "bad_input", BAD_INPUT_JOB))


@pytest.mark.parametrize("case", ["num_cpus_negative", "num_cpus_negative_options",
                                  "num_cpus_negative_actor"])
def test_negative_num_cpus_is_value_error(bad_input, case):
    assert bad_input[case] is not None, f"{case}: no error"
    name, message = bad_input[case]
    assert name == "ValueError" and "num_cpus" in message, bad_input[case]


def test_nan_num_cpus_is_value_error(bad_input):
    assert bad_input["num_cpus_nan"] is not None, "num_cpus=nan was accepted"
    assert bad_input["num_cpus_nan"][0] == "ValueError"


@pytest.mark.parametrize("case", ["unknown_option", "unknown_option_options",
                                  "unknown_option_actor"])
def test_unknown_option_is_value_error_naming_it(bad_input, case):
    assert bad_input[case] is not None, f"{case}: no error"
    name, message = bad_input[case]
    assert name == "ValueError" and "bogus_option" in message, bad_input[case]


@pytest.mark.parametrize("case,error", [
    ("get_int", "TypeError"), ("get_list_of_int", "TypeError"), ("wait_too_many", "ValueError"),
    ("kill_task", "TypeError"), ("kill_int", "TypeError"),
])
def test_bad_api_arguments(bad_input, case, error):
    assert bad_input[case] is not None, f"{case}: no error"
    assert bad_input[case][0] == error, bad_input[case]
    assert bad_input["still_works"] == 1


def test_unrelated_environment_variable_does_not_break_init(run_job: RunJob, cleanup) -> None:
    code = """
        import hpcray

        hpcray.init()
        print("RESULT {}", flush=True)
    """
    proc = run_job(code, n=2, timeout=60, env={"SWI": "enabled"})
    _result(proc)


def test_no_job_left_running_after_module(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The shared jobs of this module left no process behind."""
    base = str(tmp_path_factory.getbasetemp())
    assert _leftovers(base) == []
