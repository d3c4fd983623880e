"""In-process tests of the pure Slurm logic: the allocation from the environment, the batch
script ``hpcray sbatch`` writes, and the preemption settings. No Slurm, no MPI."""

from __future__ import annotations

import signal
import subprocess

import pytest

from hpcray._private.core.config import load
from hpcray._private.job import preempt, slurm
from hpcray._private.job.sbatch import BatchSpec, parse_signal_request, render


@pytest.mark.parametrize(("text", "names"), [
    ("n1", ["n1"]),
    ("n[1-3,5]", ["n1", "n2", "n3", "n5"]),
    ("gpu[08-11]", ["gpu08", "gpu09", "gpu10", "gpu11"]),
    ("n[1-2],login,gpu[01,03]", ["n1", "n2", "login", "gpu01", "gpu03"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("a1,b2", ["a1", "b2"]),
])
def test_expand_hostlist(text, names):
    assert slurm.expand_hostlist(text) == names


@pytest.mark.parametrize("bad", ["n[1-2", "n1-2]", "n[a-b]", "n[3-1]"])
def test_expand_hostlist_rejects_malformed(bad):
    with pytest.raises(ValueError, match="host list"):
        slurm.expand_hostlist(bad)


@pytest.mark.parametrize("names", [
    ["n1", "n2", "n3", "n5"], ["gpu08", "gpu09", "gpu10"], ["login"], ["n1", "x", "n3"],
])
def test_compress_round_trip(names):
    assert slurm.expand_hostlist(slurm.compress_hostlist(names)) == names


def test_compress_hostlist_form():
    assert slurm.compress_hostlist(["n1", "n2", "n3", "n5"]) == "n[1-3,5]"


def test_tasks_per_node():
    assert slurm.tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert slurm.tasks_per_node("4") == [4]
    with pytest.raises(ValueError, match="tasks-per-node"):
        slurm.tasks_per_node("2(3)")


@pytest.mark.parametrize(("text", "count"), [
    ("2", 2), ("a100:2", 2), ("gpu:a100:4", 4), ("a100:1,v100:2", 3), (None, None), ("x", None),
])
def test_gpu_count(text, count):
    assert slurm.gpu_count(text) == count


BATCH_ENV = {
    "SLURM_JOB_ID": "1234", "SLURM_JOB_NAME": "train", "SLURM_JOB_NODELIST": "n[1-2]",
    "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "5", "SLURM_TASKS_PER_NODE": "3,2",
    "SLURM_CPUS_PER_TASK": "4", "SLURM_GPUS_PER_NODE": "a100:2", "SLURM_RESTART_COUNT": "2",
    "SLURM_ARRAY_JOB_ID": "1200", "SLURM_ARRAY_TASK_ID": "7", "SLURM_SUBMIT_DIR": "/home/u",
    "SLURMD_NODENAME": "n2", "SLURM_PROCID": "3", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
    "SLURM_GPUS_ON_NODE": "2", "SLURM_STEP_GPUS": "0,1", "SLURM_STEP_ID": "0",
    "SLURM_CPUS_ON_NODE": "12",
}


def test_job_info_from_the_environment():
    info = slurm.job_info(BATCH_ENV)
    assert info["job_id"] == "1234" and info["step_id"] == "0" and info["job_name"] == "train"
    assert info["nodelist"] == ["n1", "n2"] and info["num_nodes"] == 2
    assert info["ntasks"] == 5 and info["tasks_per_node"] == [3, 2]
    assert info["cpus_per_task"] == 4.0 and info["gpus_per_node"] == 2
    assert info["restart_count"] == 2
    assert (info["array_job_id"], info["array_task_id"]) == ("1200", 7)
    rank = slurm.rank_info(BATCH_ENV)
    assert rank == {"node_name": "n2", "proc_id": 3, "local_id": 0, "node_index": 1,
                    "cpus_on_node": 12, "gpus_on_node": 2, "gpu_ids": ["0", "1"]}
    assert slurm.node_info(rank) == {"node_name": "n2", "node_index": 1, "cpus_on_node": 12,
                                     "gpus_on_node": 2}


def test_outside_slurm():
    assert slurm.job_info({}) is None and slurm.rank_info({}) is None
    assert not slurm.in_allocation({}) and slurm.cpus_per_task({}) is None
    assert slurm.step_tasks({}) == 0


def test_first_run_has_restart_count_zero():
    assert slurm.job_info({"SLURM_JOB_ID": "9"})["restart_count"] == 0


def test_step_tasks_only_for_tasks_srun_started():
    assert slurm.step_tasks({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4"}) == 4
    # a batch script (no step) and ranks started by mpiexec's srun-launched daemons
    assert slurm.step_tasks({"SLURM_NTASKS": "4"}) == 0
    assert slurm.step_tasks({"SLURM_STEP_ID": "0", "SLURM_NTASKS": "4",
                             "MPI_LOCALNRANKS": "2"}) == 0


def test_cpus_per_task_sets_a_ranks_cpus(monkeypatch):
    monkeypatch.delenv("HPCRAY_CPUS_PER_RANK", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert load(slurm.config_defaults()).cpus_per_rank == 4.0
    monkeypatch.setenv("HPCRAY_CPUS_PER_RANK", "2")  # hpcray's own setting wins
    assert load(slurm.config_defaults()).cpus_per_rank == 2.0
    assert load(slurm.config_defaults(), cpus_per_rank=3.0).cpus_per_rank == 3.0
    monkeypatch.delenv("HPCRAY_CPUS_PER_RANK")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert load(slurm.config_defaults()).cpus_per_rank == 1.0


def test_state_dir(tmp_path):
    assert slurm.state_dir("77", cwd=str(tmp_path)) == str(tmp_path / ".hpcray" / "77")
    assert slurm.state_dir("77", explicit=str(tmp_path / "s")) == str(tmp_path / "s")
    # a working directory the job cannot write (here: one that does not exist): $TMPDIR
    assert slurm.state_dir("77", cwd=str(tmp_path / "missing"), tmpdir="/scratch") == \
        "/scratch/hpcray-77"
    assert slurm.state_dir("12_3", cwd=str(tmp_path)).endswith("12_3")


# -- preemption settings ----------------------------------------------------------------
def test_preempt_signal_defaults():
    assert preempt.preempt_signal("", {"SLURM_JOB_ID": "1"}) == signal.SIGUSR1
    # Hydra sends SIGUSR1 when a rank dies: not a preemption warning there
    assert preempt.preempt_signal("", {"SLURM_JOB_ID": "1", "MPI_LOCALNRANKS": "2"}) is None
    assert preempt.preempt_signal("", {}) is None
    assert preempt.preempt_signal("USR2", {}) == signal.SIGUSR2
    assert preempt.preempt_signal("SIGUSR2", {}) == signal.SIGUSR2
    assert preempt.preempt_signal("12", {}) == signal.SIGUSR2
    assert preempt.preempt_signal("none", {"SLURM_JOB_ID": "1"}) is None
    with pytest.raises(ValueError, match="HPCRAY_PREEMPT_SIGNAL"):
        preempt.preempt_signal("USR9", {})


def test_requeue_setting_outside_slurm_never_requeues():
    assert not preempt.requeue_enabled("1", "5", {})
    assert not preempt.requeue_enabled("0", "5", {"SLURM_JOB_ID": "5"})
    assert preempt.requeue_enabled("1", "5", {"SLURM_JOB_ID": "5"})


def test_on_preempt_rejects_non_callables():
    with pytest.raises(TypeError, match="callable"):
        preempt.register(42)


# -- the batch script ------------------------------------------------------------------
def _spec(**kw) -> BatchSpec:
    return BatchSpec(python="/venv/bin/python", script="/home/u/train.py", args=["--lr", "0.1"],
                     **kw)


def test_sbatch_script_plain():
    text = render(_spec(nodes=2, ranks_per_node=4, cpus_per_rank=8, time="01:00:00",
                        partition="gpu", account="proj", job_name="train",
                        sbatch_args=["--mem=16G"]))
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --time=01:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=proj",
                 "#SBATCH --job-name=train", "#SBATCH --mem=16G", "#SBATCH --output=%x-%j.out"]:
        assert line in text.splitlines()
    assert ("exec srun --mpi=pmi2 --cpu-bind=none --kill-on-bad-exit=0 /venv/bin/python -m "
            "hpcray /home/u/train.py --lr 0.1") in text
    assert "--requeue" not in text and "trap" not in text


def test_sbatch_script_batch_signal_is_forwarded_to_srun():
    text = render(_spec(signal="B:USR1@90", requeue=True))
    lines = text.splitlines()
    assert "#SBATCH --signal=B:USR1@90" in lines and "#SBATCH --requeue" in lines
    assert "#SBATCH --open-mode=append" in lines
    assert "export HPCRAY_PREEMPT_SIGNAL=USR1" in lines
    assert "trap 'kill -USR1 \"$step\" 2>/dev/null || true' USR1" in lines
    assert any(line.endswith(" &") and line.startswith("srun ") for line in lines)


def test_sbatch_script_mpiexec_gets_sigterm():
    text = render(_spec(signal="USR2@60", launcher="mpiexec",
                        mpiexec=["/x/mpiexec", "-n", "2", "-disable-auto-cleanup"]))
    lines = text.splitlines()
    # only the batch shell is signalled; it hands mpiexec a SIGTERM, which Hydra forwards
    assert "#SBATCH --signal=B:USR2@60" in lines
    assert "trap 'kill -TERM \"$step\" 2>/dev/null || true' USR2" in lines
    assert "HPCRAY_PREEMPT_SIGNAL" not in text
    assert any(line.startswith("/x/mpiexec -n 2 -disable-auto-cleanup /venv/bin/python")
               for line in lines)


def test_sbatch_script_is_valid_bash(tmp_path):
    for spec in (_spec(), _spec(signal="B:USR1@60", requeue=True),
                 _spec(launcher="mpiexec", mpiexec=["mpiexec", "-n", "2"], signal="TERM@30")):
        path = tmp_path / "job.sbatch"
        path.write_text(render(spec))
        assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0


@pytest.mark.parametrize(("kw", "message"), [
    ({"nodes": 1, "ranks_per_node": 1}, "at least 2 ranks"),
    ({"launcher": "mpirun"}, "srun or mpiexec"),
    ({"signal": "B:USR1@x"}, "B:USR1@60"),
    ({"signal": "FOO"}, "not a signal"),
    ({"sbatch_args": ["mem=1G"]}, "one sbatch option"),
])
def test_sbatch_script_bad_input(kw, message):
    with pytest.raises(ValueError, match=message):
        render(_spec(**kw))


def test_parse_signal_request():
    assert parse_signal_request("B:USR1@60") == (True, signal.SIGUSR1, 60)
    assert parse_signal_request("USR2") == (False, signal.SIGUSR2, None)
    assert parse_signal_request("RB:10@5") == (True, signal.SIGUSR1, 5)


def test_srun_wrapper_outside_an_allocation(tmp_path):
    from pathlib import Path

    wrapper = Path(__file__).resolve().parents[2] / "launchers" / "srun-hpcray"
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(wrapper), "job.py"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "not inside a Slurm allocation" in proc.stderr
    assert "hpcray sbatch" in proc.stderr
    proc = subprocess.run([str(wrapper), "job.py"], capture_output=True, text=True,
                          env=dict(env, SLURM_JOB_ID="1"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "job.py' not found" in proc.stderr
