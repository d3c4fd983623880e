"""hpcray on a real two-node Slurm cluster: srun steps and sbatch jobs across nodes n1 and n2.

The cluster is the one slurm/testing/cluster.sh starts on this machine (.ci/run starts it);
without it every test here is skipped, with the reason. Both "nodes" share this machine, so a
test can see every rank's process: the checks for leftovers look at all of them.

Every test has a hard deadline; whatever it submitted is cancelled when it ends, pass or fail.
The one time bound asserted is hpcray's promise that scancel ends every rank within 10 s.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, kill_all, mpiexec, run_process
from test_tune import PREEMPTED_SWEEP, check_preempted_sweep

SLURM_DIR = Path(os.environ.get("HPCRAY_SLURM_DIR", "/tmp/hpcray-slurm"))
#: hpcray's bound from scancel to the last rank gone
SCANCEL_BOUND_S = 10
#: generous deadline for a job to start and finish on this 2-core machine
JOB_TIMEOUT_S = 150


# -- the cluster ------------------------------------------------------------------------------
def _slurm_env() -> dict[str, str]:
    env = dict(os.environ)
    if not env.get("SLURM_CONF") and (SLURM_DIR / "slurm.conf").exists():
        env["SLURM_CONF"] = str(SLURM_DIR / "slurm.conf")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["HPCRAY_INIT_TIMEOUT"] = "60"  # a start-up that cannot finish fails fast
    for key in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        del env[key]  # the tests may themselves run inside a Slurm job
    return env


def _cluster_problem() -> str | None:
    """Why the test cluster cannot be used, or None when both nodes are up."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "Slurm is not installed (run: slurm/testing/cluster.sh up)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True,
                              text=True, timeout=15, env=_slurm_env(), check=False)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    states = dict(line.split() for line in proc.stdout.splitlines() if len(line.split()) == 2)
    usable = {n for n, s in states.items() if s.rstrip("*") in ("idle", "mix", "alloc")}
    if not {"n1", "n2"} <= usable:
        said = proc.stdout.strip() or proc.stderr.strip()
        return (f"no two-node test cluster reachable (sinfo: {said!r}); "
                "start one with: slurm/testing/cluster.sh up")
    return None


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    problem = _cluster_problem()
    if problem and os.environ.get("HPCRAY_REQUIRE_SLURM") == "1":
        # .ci/run started the cluster: a broken one is a failure, not a reason to skip
        pytest.fail(f"HPCRAY_REQUIRE_SLURM=1 but {problem}")
    if problem:
        pytest.skip(problem)
    return _slurm_env()


class Jobs:
    """Submits sbatch jobs and srun steps; cancels whatever is left at the end of a test."""

    def __init__(self, env: dict[str, str], workdir: Path):
        self.env = env
        self.workdir = workdir
        self.name = f"hpcray-test-{uuid.uuid4().hex[:8]}"
        self.ids: list[str] = []

    def script(self, code: str, name: str = "job.py") -> Path:
        path = self.workdir / name
        path.write_text(textwrap.dedent(code))
        return path

    def sbatch(self, *args: str, env: dict | None = None) -> str:
        full_env = dict(self.env, **(env or {}))
        proc = subprocess.run(["sbatch", "--parsable", f"--job-name={self.name}", *args],
                              capture_output=True, text=True, cwd=self.workdir, env=full_env,
                              timeout=60, check=False)
        assert proc.returncode == 0, f"sbatch {args} failed: {proc.stderr}"
        job_id = proc.stdout.strip().split(";")[0]
        self.ids.append(job_id)
        return job_id

    def srun(self, *args: str, timeout: float = JOB_TIMEOUT_S,
             env: dict | None = None) -> subprocess.CompletedProcess:
        extra = dict(self.env, **(env or {}))
        return run_process(["srun", f"--job-name={self.name}", *args], timeout, env=extra,
                           cwd=str(self.workdir))

    def info(self, job_id: str) -> dict[str, str]:
        proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                              text=True, env=self.env, timeout=30, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", proc.stdout))

    def state(self, job_id: str) -> str:
        return self.info(job_id).get("JobState", "")

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout: float = JOB_TIMEOUT_S,
                   output: Path | None = None) -> dict[str, str]:
        """Polls until the job is in one of states; fails with its output otherwise."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.info(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.25)
        text = output.read_text() if output and output.exists() else "(no output file)"
        pytest.fail(f"job {job_id} not in {states} after {timeout} s: {info}\n--- output\n{text}")

    def wait_done(self, job_id: str, timeout: float = JOB_TIMEOUT_S,
                  output: Path | None = None) -> dict[str, str]:
        return self.wait_state(job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                        "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"),
                               timeout, output)

    def wait_output(self, path: Path, pattern: str, timeout: float = JOB_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = path.read_text() if path.exists() else ""
            if re.search(pattern, text):
                return text
            time.sleep(0.2)
        pytest.fail(f"{pattern!r} not in {path} after {timeout} s:\n"
                    f"{path.read_text() if path.exists() else '(no file)'}")

    def cancel_all(self) -> None:
        subprocess.run(["scancel", f"--name={self.name}"], env=self.env, timeout=30,
                       capture_output=True, check=False)
        if self.ids:
            subprocess.run(["scancel", *self.ids], env=self.env, timeout=30,
                           capture_output=True, check=False)


#: What Slurm 22.05's mpi/pmi2 plugin logs when it misreads MPICH's PMI-1 "put" lines during
#: MPI_Init (the UCX business cards: about 20 lines of up to 750 bytes for 4 ranks); the step
#: then fails in MPI_Init, before hpcray runs. It depends on the bytes put: in full-suite runs
#: the same two tests hit it every time (running again, even with an extra environment
#: variable, failed the same way), alone they pass. Not hpcray's to fix: a test that hits it
#: runs again with MPICH's OFI netmod (2 short puts in all, no UCX business cards).
def ofi_netmod(test):
    """Runs the test with MPICH's OFI netmod, named here rather than switched to on failure:
    Slurm 22.05's mpi/pmi2 plugin misreads the long PMI `put` lines of MPICH's default UCX
    netmod (its addresses) in full-suite runs, and the step then fails inside MPI_Init before
    hpcray runs (slurm/README.md, "Known issue"). OFI puts two short lines."""

    @functools.wraps(test)
    def run(jobs, *args, **kwargs):
        base = dict(jobs.env)
        jobs.env = dict(base, MPIR_CVAR_CH4_NETMOD="ofi")
        try:
            return test(jobs, *args, **kwargs)
        finally:
            jobs.env = base

    return run


@pytest.fixture
def jobs(slurm_env, tmp_path):
    jobs = Jobs(slurm_env, tmp_path)
    yield jobs
    jobs.cancel_all()
    kill_all(_processes(str(tmp_path)))


def _processes(marker: str) -> list[psutil.Process]:
    """Live processes (either node) whose command line mentions marker."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(marker in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _result(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, text
    return json.loads(lines[0][len("RESULT "):])


# -- across two nodes --------------------------------------------------------------------
ACROSS_NODES = """
    import hashlib
    import json

    import numpy as np

    import hpcray
    from hpcray.util import NodeAffinitySchedulingStrategy

    hpcray.init()
    ctx = hpcray.get_runtime_context()
    out = {"job_id": ctx.get_job_id(), "slurm": ctx.get_slurm_info(),
           "restart_count": ctx.get_restart_count(), "state_dir": ctx.get_state_dir(),
           "cpu": hpcray.cluster_resources().get("CPU")}
    nodes = hpcray.nodes()
    out["nodes"] = sorted(n["NodeName"] for n in nodes)
    out["node_slurm"] = {n["NodeName"]: n["Slurm"] for n in nodes}
    out["ranks"] = {n["NodeName"]: n["Ranks"] for n in nodes}


    @hpcray.remote
    def where():
        import time
        time.sleep(0.2)
        c = hpcray.get_runtime_context()
        return [c.get_node_name(), c.get_slurm_info()["node_name"]]


    out["spread"] = sorted({tuple(w) for w in hpcray.get(
        [where.options(scheduling_strategy="SPREAD").remote() for _ in range(6)])})


    @hpcray.remote
    def make(seed):
        data = np.random.default_rng(seed).integers(0, 256, 100 << 20, dtype=np.uint8)
        return hpcray.get_runtime_context().get_node_name(), data


    @hpcray.remote
    def digest(pair):
        node, data = pair
        return [node, hpcray.get_runtime_context().get_node_name(), int(data.nbytes),
                hashlib.sha256(data.tobytes()).hexdigest()]


    first, second = sorted(nodes, key=lambda n: n["NodeName"])
    on_first = make.options(scheduling_strategy=NodeAffinitySchedulingStrategy(first["NodeID"]))
    on_second = digest.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(second["NodeID"]))
    out["moved"] = hpcray.get(on_second.remote(on_first.remote(7)), timeout=120)
    expected = np.random.default_rng(7).integers(0, 256, 100 << 20, dtype=np.uint8)
    out["expected_digest"] = hashlib.sha256(expected.tobytes()).hexdigest()
    print("RESULT " + json.dumps(out), flush=True)
"""


def _check_across(out: dict, job_id: str, ranks_per_node: int) -> None:
    assert out["nodes"] == ["n1", "n2"], out
    assert out["spread"] == [["n1", "n1"], ["n2", "n2"]], out
    src, dst, size, digest = out["moved"]
    assert (src, dst, size) == ("n1", "n2", 100 << 20), out["moved"]
    assert digest == out["expected_digest"]
    assert out["job_id"] == job_id
    slurm = out["slurm"]
    assert slurm["job_id"] == job_id and slurm["nodelist"] == ["n1", "n2"], slurm
    assert slurm["num_nodes"] == 2 and slurm["node_name"] == "n1", slurm
    assert out["restart_count"] == 0
    assert out["state_dir"].endswith(os.path.join(".hpcray", job_id)), out["state_dir"]
    assert {name: s["node_name"] for name, s in out["node_slurm"].items()} == {
        "n1": "n1", "n2": "n2"}
    assert sorted(len(r) for r in out["ranks"].values()) == [ranks_per_node] * 2, out["ranks"]


@ofi_netmod
def test_srun_step_across_two_nodes(jobs):
    """srun --mpi=pmi2: nodes(), SPREAD and a 100 MiB object from a rank on n1 to one on n2."""
    script = jobs.script(ACROSS_NODES)
    proc = jobs.srun("-N", "2", "--ntasks-per-node=2", "--mpi=pmi2", sys.executable,
                     str(script))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = _result(proc.stdout)
    job_id = out["slurm"]["job_id"]
    _check_across(out, job_id, 2)
    assert out["slurm"]["tasks_per_node"] == [2, 2] and out["slurm"]["ntasks"] == 4
    assert out["slurm"]["step_id"] == "0"
    assert out["cpu"] == 3.0  # three worker ranks, one CPU each


@ofi_netmod
def test_mpiexec_inside_sbatch_same_script(jobs):
    """The same script under mpiexec in a batch job; --cpus-per-task=2 makes 2-CPU ranks."""
    script = jobs.script(ACROSS_NODES)
    batch = jobs.script(f"""\
        #!/bin/bash
        exec {mpiexec()} -n "$SLURM_NTASKS" -disable-auto-cleanup {sys.executable} {script}
        """, "mpiexec.sbatch")
    output = jobs.workdir / "out.txt"
    job_id = jobs.sbatch("-N", "2", "--ntasks-per-node=2", "--cpus-per-task=2",
                         f"--output={output}", str(batch))
    info = jobs.wait_done(job_id, output=output)
    text = output.read_text()
    assert info["JobState"] == "COMPLETED", text
    out = _result(text)
    _check_across(out, job_id, 2)
    assert out["slurm"]["cpus_per_task"] == 2
    assert out["cpu"] == 6.0  # three worker ranks advertising 2 CPUs each


@ofi_netmod
def test_srun_wrapper_in_a_batch_job(jobs):
    """launchers/srun-hpcray inside an sbatch job, 2 nodes x 2 ranks."""
    script = jobs.script(ACROSS_NODES)
    output = jobs.workdir / "out.txt"
    job_id = jobs.sbatch("-N", "2", "--ntasks-per-node=2", f"--output={output}", "--wrap",
                         f"{ROOT / 'launchers' / 'srun-hpcray'} {script}",
                         env={"PYTHON": sys.executable})
    info = jobs.wait_done(job_id, output=output)
    text = output.read_text()
    assert info["JobState"] == "COMPLETED", text
    _check_across(_result(text), job_id, 2)


@ofi_netmod
def test_srun_without_mpi_plugin_is_a_clear_error(jobs):
    script = jobs.script("import hpcray\nhpcray.init()\nprint('RESULT {}')\n")
    proc = jobs.srun("-N", "1", "-n", "2", "--mpi=none", sys.executable, str(script), timeout=60)
    assert proc.returncode != 0
    assert "srun --mpi=pmi2" in proc.stderr and "2 tasks" in proc.stderr, proc.stderr
    assert "RESULT" not in proc.stdout


# -- templates -------------------------------------------------------------------------------
TEMPLATE_JOB = """
    import json
    import sys

    import hpcray

    hpcray.init()
    ctx = hpcray.get_runtime_context()


    @hpcray.remote
    def info():
        c = hpcray.get_runtime_context()
        s = c.get_slurm_info()
        return [c.get_rank(), s["node_name"], s["gpus_on_node"], s["gpu_ids"]]


    ranks = {r[0]: r[1:] for r in hpcray.get(
        [info.options(scheduling_strategy="SPREAD").remote() for _ in range(24)])}
    out = {"args": sys.argv[1:], "nodes": sorted(n["NodeName"] for n in hpcray.nodes()),
           "workers": ranks, "slurm": ctx.get_slurm_info(),
           "gpu_resource": hpcray.cluster_resources().get("GPU", 0)}
    if out["gpu_resource"]:
        @hpcray.remote(num_gpus=0.25)
        def quarter():
            return hpcray.get_gpu_ids()
        out["quarters"] = hpcray.get([quarter.remote() for _ in range(4)])
    print("RESULT " + json.dumps(out), flush=True)
"""


def _run_template(jobs: Jobs, template: str, *overrides: str) -> dict:
    script = jobs.script(TEMPLATE_JOB)
    output = jobs.workdir / "out.txt"
    job_id = jobs.sbatch(*overrides, f"--output={output}", str(ROOT / "slurm" / template),
                         str(script), "alpha", "--beta=2")
    info = jobs.wait_done(job_id, output=output)
    text = output.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text
    out = _result(text)
    assert out["args"] == ["alpha", "--beta=2"]
    return out


@ofi_netmod
def test_template_cpu(jobs):
    out = _run_template(jobs, "cpu.sbatch")  # as written: 2 nodes x 2 ranks
    assert out["nodes"] == ["n1", "n2"]
    assert sorted(out["workers"]) == ["1", "2", "3"], out["workers"]
    assert out["slurm"]["tasks_per_node"] == [2, 2] and out["slurm"]["cpus_per_task"] == 1


@ofi_netmod
def test_template_gpu_per_rank(jobs):
    """The cluster's GPUs are fake (Slurm counts them; nothing runs on them): the template's
    request, its srun line and what Slurm reports to each rank are checked, not CUDA."""
    out = _run_template(jobs, "gpu-per-rank.sbatch", "--nodes=2", "--ntasks-per-node=2",
                        "--gpus-per-node=2", "--cpus-per-task=1")
    assert out["nodes"] == ["n1", "n2"]
    assert out["slurm"]["gpus_per_node"] == 2
    for rank, (node, on_node, gpu_ids) in out["workers"].items():
        assert on_node == 2 and gpu_ids == ["0", "1"], (rank, node, on_node, gpu_ids)


@ofi_netmod
def test_template_gpu_shared(jobs):
    out = _run_template(jobs, "gpu-shared.sbatch", "--nodes=1", "--ntasks-per-node=4",
                        "--gpus-per-node=1", "--cpus-per-task=1")
    assert len(out["nodes"]) == 1 and sorted(out["workers"]) == ["1", "2", "3"]
    for node, on_node, gpu_ids in out["workers"].values():
        assert on_node == 1 and len(gpu_ids) == 1, out["workers"]
    if out["gpu_resource"]:
        assert len(out["quarters"]) == 4


# -- hpcray sbatch -----------------------------------------------------------------------------
def _hpcray_sbatch(jobs: Jobs, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcray", "sbatch", *args],
                          capture_output=True, text=True, cwd=jobs.workdir, env=jobs.env,
                          timeout=60, check=False)


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
@ofi_netmod
def test_hpcray_sbatch_submits_and_completes(jobs, launcher):
    script = jobs.script(ACROSS_NODES)
    output = jobs.workdir / "cli.out"
    proc = _hpcray_sbatch(jobs, "--nodes", "2", "--ranks-per-node", "2", "--time", "00:05:00",
                          "--job-name", jobs.name, "--output", str(output),
                          "--launcher", launcher, str(script))
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.isdigit(), proc.stdout
    jobs.ids.append(job_id)
    info = jobs.wait_done(job_id, output=output)
    text = output.read_text()
    assert info["JobState"] == "COMPLETED", text
    assert info["TimeLimit"] == "00:05:00"
    _check_across(_result(text), job_id, 2)


@ofi_netmod
def test_hpcray_sbatch_bad_input(jobs):
    proc = _hpcray_sbatch(jobs, "--dry-run", "missing.py")
    assert proc.returncode == 2 and "missing.py" in proc.stderr and "not found" in proc.stderr
    script = jobs.script("print(1)\n")
    proc = _hpcray_sbatch(jobs, "--dry-run", "--signal", "B:NOPE@5", str(script))
    assert proc.returncode == 2 and "NOPE" in proc.stderr and "USR1" in proc.stderr
    proc = _hpcray_sbatch(jobs, "--partition", "no-such-partition", str(script))
    assert proc.returncode == 2 and "sbatch refused" in proc.stderr, proc.stderr


# -- preemption and requeue -------------------------------------------------------------------
COUNTER_JOB = """
    # Adds f(i) for i in range(N), one task per step. The progress (next step, total and the
    # steps counted) is saved only by the on_preempt callback and at the end, so a resumed run
    # proves the callback ran; the list of counted steps proves none was lost or doubled.
    import json
    import os
    import sys
    import threading
    import time

    import hpcray

    N = int(sys.argv[1])
    hpcray.init()
    ctx = hpcray.get_runtime_context()
    path = os.path.join(ctx.get_state_dir(), "counter.json")
    state = {"next": 0, "total": 0, "counted": [], "runs": []}
    if os.path.exists(path):
        with open(path) as f:
            state = json.load(f)
    state["runs"].append({"restart_count": ctx.get_restart_count(), "start": state["next"]})
    lock = threading.Lock()


    def save():
        with open(path + ".tmp", "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)


    @hpcray.on_preempt
    def checkpoint():
        with lock:
            save()
            print(f"checkpoint at step {state['next']}", flush=True)


    @hpcray.remote
    def f(i):
        time.sleep(0.05)
        return i * i + 1


    print(f"run {ctx.get_restart_count()} starts at step {state['next']}", flush=True)
    while state["next"] < N:
        value = hpcray.get(f.remote(state["next"]))
        with lock:
            state["total"] += value
            state["counted"].append(state["next"])
            state["next"] += 1
        print(f"step {state['next']}", flush=True)
    with lock:
        save()
    print("RESULT " + json.dumps(state), flush=True)
"""
COUNTER_STEPS = 160


def _check_counter(text: str) -> None:
    out = _result(text)
    assert out["total"] == sum(i * i + 1 for i in range(COUNTER_STEPS)), text
    assert out["counted"] == list(range(COUNTER_STEPS)), "a step was lost or counted twice"
    runs = out["runs"]
    assert len(runs) >= 2, f"the job was not requeued: {runs}\n{text}"
    assert [r["restart_count"] for r in runs] == list(range(len(runs))), runs
    assert runs[0]["start"] == 0 and all(r["start"] > 0 for r in runs[1:]), (
        f"a restart did not resume from the checkpoint: {runs}")


def _signal_mid_run(jobs, job_id: str, output, scancel_args: list[str], expected: str,
                    when: str = r"step 40\b", check=_check_counter) -> str:
    """Signals a running job once its output matches when (the counter job: at step 40); it
    must be requeued once by Slurm and pass check(output) (the counter: the exact total).
    Returns its output."""
    jobs.wait_output(output, when)
    subprocess.run(["scancel", *scancel_args, job_id], env=jobs.env, timeout=30, check=True)
    info = jobs.wait_done(job_id, timeout=JOB_TIMEOUT_S + 60, output=output)
    text = output.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, text)
    assert expected in text
    check(text)
    return text


@ofi_netmod
def test_requeue_template_usr1_warning(jobs):
    """sweep-requeue.sbatch: Slurm's B:USR1 warning (sent here with scancel --batch) reaches
    the head through the batch shell; the callback saves, hpcray requeues, the rerun resumes."""
    script = jobs.script(COUNTER_JOB)
    output = jobs.workdir / "out.txt"
    job_id = jobs.sbatch(f"--output={output}", str(ROOT / "slurm" / "sweep-requeue.sbatch"),
                         str(script), str(COUNTER_STEPS))
    text = _signal_mid_run(jobs, job_id, output, ["--batch", "--signal=USR1"],
                           "hpcray: SIGUSR1 received: running 1 on_preempt callback(s)")
    assert f"requeued Slurm job {job_id}" in text


@pytest.mark.parametrize("sig", ["TERM", "USR1"])
@ofi_netmod
def test_hpcray_sbatch_requeue_on_signal_to_the_ranks(jobs, sig):
    """An `hpcray sbatch --requeue` job whose ranks get SIGTERM (what Slurm does on preemption)
    or the --signal=USR1@T warning without B: (sent to the job steps, not the batch shell)."""
    script = jobs.script(COUNTER_JOB)
    output = jobs.workdir / "out.txt"
    warning = ["--signal", "USR1@600"] if sig == "USR1" else []
    proc = _hpcray_sbatch(jobs, "--nodes", "2", "--ranks-per-node", "2", "--requeue", *warning,
                          "--job-name", jobs.name, "--output", str(output), str(script),
                          str(COUNTER_STEPS))
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    jobs.ids.append(job_id)
    _signal_mid_run(jobs, job_id, output, [f"--signal={sig}"], f"hpcray: SIG{sig} received")


@ofi_netmod
def test_hpcray_sbatch_mpiexec_requeue_on_usr1_warning(jobs):
    """Under mpiexec (Hydra) the batch shell turns the B:USR1 warning into SIGTERM for mpiexec,
    which forwards it to every rank; USR1 itself keeps meaning "a rank died" there."""
    script = jobs.script(COUNTER_JOB)
    output = jobs.workdir / "out.txt"
    proc = _hpcray_sbatch(jobs, "--nodes", "2", "--ranks-per-node", "2", "--requeue",
                          "--signal", "B:USR1@30", "--launcher", "mpiexec",
                          "--job-name", jobs.name, "--output", str(output), str(script),
                          str(COUNTER_STEPS))
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    jobs.ids.append(job_id)
    _signal_mid_run(jobs, job_id, output, ["--batch", "--signal=USR1"],
                    "hpcray: SIGTERM received")


@ofi_netmod
def test_tune_sweep_requeued_resumes_where_it_stopped(jobs):
    """A Tune sweep in sweep-requeue.sbatch, warned with B:USR1 while trial 3 runs: the sweep
    saves its state in on_preempt, hpcray requeues, and the rerun restores it from the state
    dir: every trial ends where an uninterrupted ASHA sweep ends it, none run twice."""
    script = jobs.script(PREEMPTED_SWEEP)
    output = jobs.workdir / "out.txt"
    job_id = jobs.sbatch(f"--output={output}", str(ROOT / "slurm" / "sweep-requeue.sbatch"),
                         str(script), "slurm")
    text = _signal_mid_run(jobs, job_id, output, ["--batch", "--signal=USR1"],
                           "hpcray: SIGUSR1 received: running 1 on_preempt callback(s)",
                           when=r"trial k=3 at iteration 3",
                           check=lambda text: check_preempted_sweep(_result(text)))
    assert "hpcray.tune: preempted: saved the experiment" in text
    assert f"requeued Slurm job {job_id}" in text


# -- isolation and failures -----------------------------------------------------------------
CONCURRENT_JOB = """
    import json
    import os
    import sys
    import time

    import numpy as np

    import hpcray

    me, other = sys.argv[1], sys.argv[2]
    hpcray.init()
    ctx = hpcray.get_runtime_context()
    here = os.path.dirname(os.path.abspath(__file__))
    open(os.path.join(here, f"started.{me}"), "w").close()
    deadline = time.monotonic() + 90
    while not os.path.exists(os.path.join(here, f"started.{other}")):
        assert time.monotonic() < deadline, "the other job never started"
        time.sleep(0.05)


    @hpcray.remote
    def fill(value):
        return np.full(1 << 20, value, dtype=np.int64)


    @hpcray.remote
    def pid():
        return os.getpid()


    value = 1 if me == "a" else 2
    refs = [fill.remote(value) for _ in range(20)]
    sums = [int(a.sum()) for a in hpcray.get(refs)]
    pids = sorted(set(hpcray.get([pid.remote() for _ in range(20)])))
    open(os.path.join(here, f"done.{me}"), "w").close()
    while not os.path.exists(os.path.join(here, f"done.{other}")):
        assert time.monotonic() < deadline, "the other job never finished its work"
        time.sleep(0.05)
    out = {"job_id": ctx.get_job_id(), "sums": sums, "pids": pids, "head": os.getpid(),
           "ranks": [n["Ranks"] for n in hpcray.nodes()], "state_dir": ctx.get_state_dir()}
    print("RESULT " + json.dumps(out), flush=True)
"""


@ofi_netmod
def test_two_jobs_on_one_node_do_not_see_each_other(jobs):
    script = jobs.script(CONCURRENT_JOB)
    ids, outputs = {}, {}
    for me, other in (("a", "b"), ("b", "a")):
        outputs[me] = jobs.workdir / f"{me}.out"
        launch = f"srun --mpi=pmi2 {sys.executable} {script} {me} {other}"
        ids[me] = jobs.sbatch("-w", "n1", "-N", "1", "-n", "2", f"--output={outputs[me]}",
                              "--wrap", launch)
    results = {}
    for me, job_id in ids.items():
        info = jobs.wait_done(job_id, output=outputs[me])
        text = outputs[me].read_text()
        assert info["JobState"] == "COMPLETED", text
        results[me] = _result(text)
    a, b = results["a"], results["b"]
    assert a["job_id"] == ids["a"] and b["job_id"] == ids["b"]
    assert a["sums"] == [1 << 20] * 20 and b["sums"] == [2 << 20] * 20
    assert a["ranks"] == [[0, 1]] and b["ranks"] == [[0, 1]]
    assert not set(a["pids"] + [a["head"]]) & set(b["pids"] + [b["head"]])
    assert a["state_dir"] != b["state_dir"]


SLEEPER_JOB = """
    import os
    import sys
    import time

    import hpcray

    hpcray.init()
    here = os.path.dirname(os.path.abspath(__file__))


    @hpcray.remote
    def hold(i):
        rt = hpcray.get_runtime_context()._rt
        with open(os.path.join(here, f"pid.{rt.ranks[rt.rank].pid}"), "w") as f:  # the rank
            f.write(hpcray.get_runtime_context().get_node_name())
        open(os.path.join(here, f"exec.{os.getpid()}"), "w").close()  # its executor
        time.sleep(600)


    with open(os.path.join(here, f"pid.{os.getpid()}"), "w") as f:
        f.write("head")
    # no retries: a task lost with its rank fails the driver's get, which ends the job
    hold = hold.options(scheduling_strategy="SPREAD", max_retries=0)
    refs = [hold.remote(i) for i in range(3)]
    ready, _ = hpcray.wait(refs, num_returns=1)
    hpcray.get(ready)
"""


def _start_sleeper(jobs: Jobs) -> tuple[str, Path, dict[int, str]]:
    """A 2-node x 2-rank job whose 3 workers each hold a task; returns (id, output, pids)."""
    script = jobs.script(SLEEPER_JOB)
    output = jobs.workdir / "out.txt"
    job_id = jobs.sbatch("-N", "2", "--ntasks-per-node=2", f"--output={output}", "--wrap",
                         f"srun --mpi=pmi2 --kill-on-bad-exit=0 {sys.executable} {script}")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        pids = {int(p.name[4:]): p.read_text() for p in jobs.workdir.glob("pid.*")
                if p.read_text()}
        if len(pids) == 4:
            return job_id, output, pids
        assert time.monotonic() < deadline, f"ranks did not start: {pids}"
        assert jobs.state(job_id) in ("PENDING", "RUNNING", "CONFIGURING"), output.read_text()
        time.sleep(0.1)


@ofi_netmod
def test_scancel_ends_every_rank_within_10s(jobs):
    job_id, output, pids = _start_sleeper(jobs)
    assert sorted(pids.values()) == ["head", "n1", "n2", "n2"], pids
    start = time.monotonic()
    subprocess.run(["scancel", job_id], env=jobs.env, timeout=30, check=True)
    while any(_pid_alive(p) for p in pids) and time.monotonic() - start < 3 * SCANCEL_BOUND_S:
        time.sleep(0.1)
    elapsed = time.monotonic() - start
    alive = [p for p in pids if _pid_alive(p)]
    assert not alive and elapsed <= SCANCEL_BOUND_S, (
        f"ranks {alive} alive {elapsed:.1f} s after scancel\n{output.read_text()}")
    executors = [int(p.name[5:]) for p in jobs.workdir.glob("exec.*")]
    while any(_pid_alive(p) for p in executors) and time.monotonic() - start < 30:
        time.sleep(0.1)
    assert len(executors) == 3 and not [p for p in executors if _pid_alive(p)], executors
    # srun itself (not a rank) ends once Slurm has cleaned up the step
    deadline = time.monotonic() + 60
    while _processes(str(jobs.workdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"srun gone {time.monotonic() - start:.1f} s after scancel")
    assert not _processes(str(jobs.workdir)), "leftover processes"


@ofi_netmod
def test_rank_killed_on_one_node_ends_the_job(jobs):
    job_id, output, pids = _start_sleeper(jobs)
    victim = next(p for p, node in pids.items() if node == "n2")
    os.kill(victim, signal.SIGKILL)
    info = jobs.wait_done(job_id, output=output)
    text = output.read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", (info, text)
    assert re.search(rf"rank \d+ \(pid {victim} on \S+\) died", text), text
    assert "WorkerCrashedError" in text, text
    deadline = time.monotonic() + 30
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _pid_alive(p)], "orphaned ranks"
    assert not _processes(str(jobs.workdir)), "leftover processes"


@ofi_netmod
def test_crashing_tasks_under_srun_are_task_failures(jobs):
    """srun across both nodes: segfaults, SIGKILLs and os._exit in tasks, an actor killed
    twice, cancels: Ray's errors or retried results, and the step exits 0 (executor deaths are
    not rank deaths, so Slurm never sees a task die)."""
    from test_core import PRELUDE, job_file
    from test_isolation import _check_crashes

    script = jobs.script(PRELUDE + job_file("isolation/crashes.py"))
    proc = jobs.srun("-N", "2", "--ntasks-per-node=2", "--mpi=pmi2", sys.executable,
                     str(script))
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-4000:]
    _check_crashes(_result(proc.stdout))
