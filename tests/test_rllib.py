"""hpcray.rllib as a user runs it: real MPI jobs (head + 2 worker ranks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("torch")

JOBS = Path(__file__).parent / "jobs" / "rllib"


@pytest.fixture
def rllib_job(run_job):
    def run(name: str, n: int = 3, timeout: float = 150) -> dict:
        proc = run_job((JOBS / name).read_text(), n=n, timeout=timeout, args=[str(JOBS)])
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, f"{name}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return json.loads(lines[-1][len("RESULT "):])

    return run


def test_ppo_learns_cartpole_with_two_env_runners(rllib_job):
    out = rllib_job("ppo_learns.py")
    assert out["returns"][-1] >= 450, out["returns"]
    assert out["eval"] >= 400, out
    for key in ("env_runners", "learners", "num_env_steps_sampled_lifetime", "timers",
                "training_iteration", "time_this_iter_s", "fault_tolerance"):
        assert key in out["keys"]
    for key in ("total_loss", "policy_loss", "vf_loss", "entropy", "mean_kl_loss",
                "curr_kl_coeff"):
        assert key in out["learner_keys"]
    assert {"env_runner_sampling_timer", "learner_update_timer", "synch_weights"} <= set(
        out["timers"])
    assert "episode_return_mean" in out["runners"]


def test_ppo_same_seed_same_curve(rllib_job):
    a, b, c = rllib_job("ppo_determinism.py")["curves"]
    assert a == b
    assert a != c


def test_checkpoint_restores_same_curve_and_onto_other_runner_and_learner_counts(rllib_job):
    out = rllib_job("ppo_restore.py")
    assert out["again"] == out["straight"]
    assert out["fewer"]["iteration"] == 3
    assert out["fewer"]["lifetime"] == 3 * 2000
    assert out["fewer"]["healthy"] == 1
    assert out["learners"] == {"iteration": 3, "remote": 2}


def test_crashed_env_runner_is_replaced(rllib_job):
    out = rllib_job("runner_crash.py")
    assert out["crashed"]
    assert out["restarts"][-1] == 1
    assert out["healthy"] == 2
    assert out["steps"][0] < 2000 and out["steps"][1] == 2000
    # foreach_env_runner reaches both (replaced) runners, each with the learner's newest weights
    assert out["ids"] == [1, 2]
    assert out["runner_weights_current"] == [True, True] and out["local_weights_current"]


def test_preempted_run_resumes_the_same_curve(run_job, tmp_path):
    env = {"HPCRAY_STATE_DIR": str(tmp_path / "state")}
    script = (JOBS / "preempt.py").read_text()

    def lines(mode: str, tag: str = "ITER ") -> list:
        return [json.loads(ln[len(tag):]) for ln in outputs[mode].splitlines()
                if ln.startswith(tag)]

    outputs = {}
    for mode in ("first", "second"):
        proc = run_job(script, n=3, timeout=150, env=env, args=[str(JOBS), mode])
        assert mode == "first" or proc.returncode == 0, proc.stderr[-3000:]
        assert "RESUMED " + ("true" if mode == "second" else "false") in proc.stdout
        outputs[mode] = proc.stdout
    assert len(lines("first")) == 2
    assert lines("first") + lines("second") == lines("first", "STRAIGHT ")


def test_two_learners_allreduce_gradients_and_stay_identical(rllib_job):
    out = rllib_job("learners.py")
    assert all(out["same"])
    assert max(out["returns"]) >= 100, out["returns"]


def test_dqn_appo_learn_and_sac_runs(rllib_job):
    out = rllib_job("other_algorithms.py", timeout=200)
    assert max(out["dqn"]) >= 40, out["dqn"]
    assert max(out["appo"]) >= 100, out["appo"]
    assert out["sac"]["finite"] and out["sac"]["alpha"] != 1.0
    assert out["sac"]["steps"] == 600


def test_multi_agent_ppo_trains_one_policy_per_agent(rllib_job):
    out = rllib_job("multi_agent.py")
    assert out["policies"] == ["p0", "p1"]
    assert out["returns"][-1] >= 2 * out["returns"][0] and out["returns"][-1] >= 100, out
    assert out["agent_steps"] > out["env_steps"]


def test_tuner_runs_ppo_trials_with_pbt(rllib_job):
    out = rllib_job("tune_pbt.py")
    assert out["errors"] == 0
    assert out["iterations"] == [8, 8, 8, 8]
    assert out["perturbations"] >= 1
    # an exploited trial carries on from the donor's checkpoint (its counters come along)
    assert out["lifetime"] % 400 == 0 and out["lifetime"] >= 400


def test_tuner_by_algorithm_name_on_an_env_registered_in_the_driver(rllib_job):
    out = rllib_job("tune_by_name.py")
    assert out["errors"] == [] and out["iterations"] == [2, 2], out
    assert out["lrs"] == [3e-4, 1e-3]
    # the registered env (scale 3) made every episode: the trial's rank and its runner's
    for ret, length in zip(out["returns"], out["lens"]):
        assert ret == pytest.approx(3 * length), out
    assert out["scores"] == [2, 4]
    assert "'NoSuchAlgo'" in out["unknown"] and "'PPO'" in out["unknown"]
    assert "'constant'" in out["unknown"]


def test_rllib_getting_started_doc_script_runs_with_only_its_imports_changed(run_job, tmp_path):
    """RLlib's doc_code/getting_started.py, whole: build(), train() x 10 with save_to_path,
    Tuner("PPO", ...) with a stop on num_env_steps_sampled_lifetime and checkpoint_at_end, the
    best checkpoint's module driving a greedy CartPole episode (RLModule.from_checkpoint,
    forward_inference), and module state from the algorithm, its local and remote runners."""
    proc = run_job((JOBS / "doc_getting_started.py").read_text(), n=3, timeout=300,
                   env={"TMPDIR": str(tmp_path), "HPCRAY_TUNE_STORAGE": str(tmp_path / "res")})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert proc.stdout.count("Checkpoint saved in directory") == 2
    assert out["iterations"] == 10 and out["trials"] == 1 and out["errors"] == 0
    assert out["best_steps"] >= 20000 and out["checkpoint"], out
    assert out["best_return"] > 20, out  # CartPole's random policy averages about 22
    assert "Reached episode return of" in proc.stdout and out["greedy_return"] >= 9
