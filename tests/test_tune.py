"""hpcray.tune end to end in real MPI jobs (head + 2 worker ranks): sweeps on reused actors,
checkpoints, failures, PBT, and resuming a sweep whose job was killed."""

from __future__ import annotations

import json

import pytest
from test_core import PRELUDE, is_error, run

SWEEPS_JOB = '''
import glob
import pickle

import numpy as np

from hpcray import tune

hpcray.init()
R = {}
STORAGE = os.path.abspath("results")


def actor_id():
    return hpcray.get_runtime_context().get_actor_id()


def lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# -- ASHA over a function trainable, a large object shared with with_parameters -------------
def curve(config, data):
    for i in range(1, 9):
        tune.report({"acc": config["q"] * i + float(data.sum()), "actor": actor_id()})


data = np.zeros(2**17)
tuner = tune.Tuner(
    tune.with_parameters(curve, data=data),
    param_space={"q": tune.grid_search([0.1 * k for k in reversed(range(16))])},
    tune_config=tune.TuneConfig(metric="acc", mode="max", scheduler=tune.ASHAScheduler(
        max_t=8, grace_period=1, reduction_factor=2)),
    run_config=tune.RunConfig(storage_path=STORAGE, name="asha", verbose=1))
grid = tuner.fit()
iters = [r.metrics["training_iteration"] for r in grid]
best = grid.get_best_result()
R["asha"] = {
    "n": len(grid), "errors": grid.num_errors, "max_iter": max(iters), "min_iter": min(iters),
    "stopped_early": sum(1 for i in iters if i < 8), "best_q": best.config["q"],
    "top_q": max(r.config["q"] for r in grid if r.metrics["training_iteration"] == 8),
    "actors": len({r.metrics["actor"] for r in grid}),
    "files": all(os.path.exists(os.path.join(r.path, f)) for r in grid
                 for f in ("params.json", "result.json", "progress.csv")),
    "result_lines": all([row["training_iteration"] for row in lines(
        os.path.join(r.path, "result.json"))] == list(range(1, r.metrics["training_iteration"]
                                                          + 1)) for r in grid),
    "csv_rows": all(len(open(os.path.join(r.path, "progress.csv")).read().splitlines())
                    == r.metrics["training_iteration"] + 1 for r in grid),
    "params": json.load(open(os.path.join(best.path, "params.json"))) == best.config,
    "state": os.path.exists(os.path.join(STORAGE, "asha", "experiment_state.json")),
}


# -- the class API with checkpoints; no actor reuse -----------------------------------------
class Counter(tune.Trainable):
    def setup(self, config):
        self.total = 0

    def step(self):
        self.total += self.config["inc"]
        return {"total": self.total, "actor": actor_id()}

    def save_checkpoint(self, checkpoint_dir):
        return {"total": self.total, "iteration": self.iteration}

    def load_checkpoint(self, checkpoint):
        self.total = checkpoint["total"]


grid = tune.Tuner(
    Counter, param_space={"inc": tune.grid_search([1, 2, 3])},
    tune_config=tune.TuneConfig(metric="total", mode="max", reuse_actors=False),
    run_config=tune.RunConfig(
        storage_path=STORAGE, name="cls", stop={"training_iteration": 5}, verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_frequency=2,
                                                checkpoint_at_end=True))).fit()
saved = []
for r in grid:
    with open(os.path.join(r.checkpoint.path, "trainable_state.pkl"), "rb") as f:
        saved.append(pickle.load(f))
R["cls"] = {
    "totals": sorted(r.metrics["total"] for r in grid),
    "saved": sorted([s["total"], s["iteration"]] for s in saved),
    "kept": sorted(len(glob.glob(os.path.join(r.path, "checkpoint_*"))) for r in grid),
    "actors": len({r.metrics["actor"] for r in grid}),
    "best": grid.get_best_result().config["inc"],
}


# -- failures: retried from the last checkpoint, or recorded with the traceback -------------
def flaky(config):
    start = tune.get_checkpoint()
    begin = start.to_dict()["i"] if start else 0
    with open(os.path.join(tune.get_trial_dir(), "starts.log"), "a") as f:
        f.write(f"{begin}\\n")
    if config["kind"] == "always":
        raise ValueError("always broken")
    for i in range(begin + 1, 7):
        marker = os.path.join(tune.get_trial_dir(), "failed-once")
        if i == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first run fails at iteration 3")
        tune.report({"i": i}, checkpoint=tune.Checkpoint.from_dict({"i": i}))


grid = tune.Tuner(
    flaky, param_space={"kind": tune.grid_search(["flaky", "always"])},
    tune_config=tune.TuneConfig(metric="i", mode="max"),
    run_config=tune.RunConfig(storage_path=STORAGE, name="fail", verbose=0,
                              failure_config=tune.FailureConfig(max_failures=1))).fit()
ok, bad = grid[0], grid[1]
R["fail"] = {
    "ok_iter": ok.metrics["training_iteration"], "ok_error": ok.error is None,
    "ok_starts": open(os.path.join(ok.path, "starts.log")).read().split(),
    "ok_lines": [row["i"] for row in lines(os.path.join(ok.path, "result.json"))],
    "bad_error": [type(bad.error).__name__, "ValueError: always broken" in str(bad.error),
                  bad.trial_id in str(bad.error)],
    "bad_starts": len(open(os.path.join(bad.path, "starts.log")).read().split()),
    "error_file": "always broken" in open(os.path.join(bad.path, "error.txt")).read(),
    "errors": grid.num_errors,
}


# -- a metric missing from the reports -------------------------------------------------------
def no_metric(config):
    tune.report({"other": 1})


R["budget"] = len(tune.Tuner(
    no_metric, tune_config=tune.TuneConfig(time_budget_s=1e-9, num_samples=5),
    run_config=tune.RunConfig(storage_path=STORAGE, name="budget", verbose=0)).fit())
R["missing"] = outcome(lambda: tune.Tuner(
    no_metric, tune_config=tune.TuneConfig(metric="acc", mode="max"),
    run_config=tune.RunConfig(storage_path=STORAGE, name="missing", verbose=0)).fit())


# -- PBT: the worse trial clones the better one's checkpoint and perturbs its config --------
def pbt_trainable(config):
    # gates on files (no timing): bad reports once good has a score; good waits at iteration 3
    # until bad was exploited, so both are in the population when bad reaches iteration 2
    start = tune.get_checkpoint()
    state = start.to_dict() if start else {"score": 0.0, "owner": tune.get_trial_id()}
    folder = tune.get_trial_dir()
    shared = os.path.dirname(folder)
    with open(os.path.join(folder, "starts.log"), "a") as f:
        f.write(json.dumps([state["owner"], config["lr"]]) + "\\n")
    if state["owner"] != tune.get_trial_id():
        open(os.path.join(shared, "exploited"), "w").close()
    i = 0
    while True:
        i += 1
        if not start and config["name"] == "bad":
            poll(lambda: os.path.exists(os.path.join(shared, "reported-good")), 60)
        if not start and config["name"] == "good" and i == 3:
            poll(lambda: os.path.exists(os.path.join(shared, "exploited")), 60)
        state["score"] += config["lr"]
        tune.report({"score": state["score"]},
                    checkpoint=tune.Checkpoint.from_dict(dict(state, owner=tune.get_trial_id())))
        if config["name"] == "good":
            open(os.path.join(shared, "reported-good"), "w").close()


pbt = tune.PopulationBasedTraining(
    time_attr="training_iteration", perturbation_interval=2, resample_probability=0.0,
    hyperparam_mutations={"lr": tune.uniform(0.001, 1.0)}, seed=1)
grid = tune.Tuner(
    pbt_trainable,
    param_space={"name": tune.grid_search(["good", "bad"]),
                 "lr": tune.sample_from(lambda spec: 1.0 if spec.config.name == "good" else 0.01)},
    tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=pbt),
    run_config=tune.RunConfig(storage_path=STORAGE, name="pbt", verbose=0,
                              stop={"training_iteration": 6})).fit()
good, bad = grid[0], grid[1]
starts = [json.loads(line) for line in open(os.path.join(bad.path, "starts.log"))]
R["pbt"] = {
    "perturbations": pbt.num_perturbations, "bad_starts": starts,
    "good_id": good.trial_id, "bad_lr": bad.config["lr"],
    "iters": [row["training_iteration"] for row in lines(os.path.join(bad.path,
                                                                      "result.json"))],
    "params_lr": json.load(open(os.path.join(bad.path, "params.json")))["lr"],
}


# -- HyperBand: trials pause at each milestone and the best resume from their checkpoints ----
class Climb(tune.Trainable):
    def setup(self, config):
        self.x = 0.0

    def step(self):
        self.x += self.config["rate"]
        return {"x": self.x}

    def save_checkpoint(self, checkpoint_dir):
        return {"x": self.x}

    def load_checkpoint(self, checkpoint):
        self.x = checkpoint["x"]


grid = tune.Tuner(
    Climb, param_space={"rate": tune.grid_search([k / 10 for k in range(1, 10)])},
    tune_config=tune.TuneConfig(metric="x", mode="max", scheduler=tune.HyperBandScheduler(
        max_t=9, reduction_factor=3)),
    run_config=tune.RunConfig(storage_path=STORAGE, name="hyperband", verbose=0)).fit()
R["hyperband"] = {
    "errors": grid.num_errors,
    "iters": {str(r.config["rate"]): r.metrics["training_iteration"] for r in grid},
    "consistent": all(abs(r.metrics["x"] - r.config["rate"] * r.metrics["training_iteration"])
                      < 1e-9 for r in grid),
}
emit(R)
'''


def test_sweeps_schedulers_checkpoints_failures_pbt(run_job):
    r, proc = run(run_job, SWEEPS_JOB, timeout=240)
    asha = r["asha"]
    assert asha["n"] == 16 and asha["errors"] == 0
    assert asha["max_iter"] == 8 and asha["stopped_early"] > 0 and asha["min_iter"] >= 1
    assert asha["best_q"] == asha["top_q"] == 1.5
    assert asha["actors"] <= 2  # trials reuse the two runner actors
    assert asha["files"] and asha["result_lines"] and asha["csv_rows"] and asha["params"]
    assert asha["state"]
    assert "Tune finished: 16 trials (16 TERMINATED)" in proc.stdout  # summary, no live table
    assert "Trial status" not in proc.stdout

    cls = r["cls"]
    assert cls["totals"] == [5, 10, 15]
    assert cls["saved"] == [[5, 5], [10, 5], [15, 5]]  # checkpoint_at_end
    assert cls["kept"] == [2, 2, 2]  # num_to_keep
    assert cls["actors"] == 3  # reuse_actors=False: a fresh actor per trial
    assert cls["best"] == 3

    fail = r["fail"]
    assert fail["ok_iter"] == 6 and fail["ok_error"]
    assert fail["ok_starts"] == ["0", "2"]  # retried from its last checkpoint
    assert fail["ok_lines"] == [1, 2, 3, 4, 5, 6]
    assert fail["bad_error"] == ["TrialError", True, True]
    assert fail["bad_starts"] == 2 and fail["error_file"] and fail["errors"] == 1

    assert r["budget"] == 0  # the time budget was spent before any trial could start
    assert is_error(r["missing"], "TuneError", "without the metric(s) ['acc']", "_00000",
                    "'other'")

    pbt = r["pbt"]
    assert pbt["perturbations"] >= 1
    first, second = pbt["bad_starts"][:2]
    assert first[1] == 0.01
    assert second[0] == pbt["good_id"]  # restarted from the good trial's checkpoint
    assert second[1] in (1.2, 0.8)  # with the good trial's lr, perturbed
    assert pbt["iters"] == [1, 2, 3, 4, 5, 6]
    assert pbt["params_lr"] == pbt["bad_lr"] != 0.01

    hb = r["hyperband"]
    assert hb["errors"] == 0 and hb["consistent"]  # resumed trials restored their state
    assert hb["iters"] == {"0.1": 1, "0.2": 1, "0.3": 1, "0.4": 1, "0.5": 1, "0.6": 1,
                           "0.7": 3, "0.8": 3, "0.9": 9}


RESUME_JOB = '''
import glob
import signal

from hpcray import tune

import psutil

hpcray.init()
PATH = os.path.abspath("results/resume")


def kill_the_job():
    """SIGKILL to the launcher and every process under it, as a preemption would: the head
    first (it must see no other death it could record), this process's own ancestors last
    (killing its rank ends this executor too)."""
    rt = hpcray.get_runtime_context()._rt
    me = psutil.Process()
    ancestors = me.parents()
    launcher = next((p for p in ancestors if "mpiexec" in p.name() or "mpirun" in p.name()
                     or "prterun" in p.name()), None)
    everyone = (launcher.children(recursive=True) + [launcher]) if launcher else []
    head = [p for p in everyone if p.pid == rt.ranks[0].pid]
    mine = [p for p in ancestors if p in everyone]  # launcher ... this executor's rank
    others = [p for p in everyone if p not in head and p not in mine and p.pid != me.pid]
    for proc in head + others + sorted(mine, key=lambda p: len(p.parents())):
        try:
            proc.kill()
        except psutil.Error:
            pass
    os.kill(me.pid, signal.SIGKILL)


def train(config):
    start = tune.get_checkpoint()
    begin = start.to_dict()["i"] if start else 0
    folder = tune.get_trial_dir()
    with open(os.path.join(folder, "starts.log"), "a") as f:
        f.write(f"{begin}\\n")
    for i in range(begin + 1, 6):
        if config["k"] == 4 and i == 3 and not os.path.exists("killed"):
            def finished():
                done = []
                for state in glob.glob(os.path.join(PATH, "*", "trial_state.json")):
                    with open(state) as f:
                        saved = json.load(f)
                    if saved["status"] == "TERMINATED":
                        done.append(saved["config"]["k"])
                return sorted(done) if len(done) >= 3 else None

            def recorded():  # this trial's first two results reached result.json
                path = os.path.join(folder, "result.json")  # written by a background thread
                if not os.path.exists(path):
                    return False
                with open(path) as f:
                    return len(f.read().splitlines()) == 2

            poll(recorded, 60)
            with open("finished_at_kill.json", "w") as f:
                json.dump(poll(finished, 60), f)
            open("killed", "w").close()
            kill_the_job()
        tune.report({"i": i, "k": config["k"]}, checkpoint=tune.Checkpoint.from_dict({"i": i}))


if sys.argv[1] == "first":
    grid = tune.Tuner(train, param_space={"k": tune.grid_search(list(range(6)))},
                      tune_config=tune.TuneConfig(metric="i", mode="max",
                                                  max_concurrent_trials=2),
                      run_config=tune.RunConfig(storage_path="results", name="resume",
                                                verbose=0)).fit()
    emit({"not": "killed", "errors": [str(e) for e in grid.errors]})
else:
    R = {"can": tune.Tuner.can_restore(PATH), "cannot": tune.Tuner.can_restore("results")}
    tuner = tune.Tuner.restore(PATH, train)
    saved = tuner.get_results()  # what the killed run left, before going on
    R["saved"] = sorted(r.config["k"] for r in saved if r.metrics.get("i") == 5)
    grid = tuner.fit()
    R["n"] = len(grid)
    R["errors"] = grid.num_errors
    R["trials"] = {}
    for r in grid:
        rows = [json.loads(line) for line in open(os.path.join(r.path, "result.json"))]
        starts = open(os.path.join(r.path, "starts.log")).read().split()
        R["trials"][str(r.config["k"])] = [r.metrics["i"], [row["i"] for row in rows], starts]
    R["dirs"] = len(glob.glob(os.path.join(PATH, "*", "params.json")))
    R["finished_at_kill"] = json.load(open("finished_at_kill.json"))
    emit(R)
'''


def test_resume_after_the_job_is_killed(run_job):
    proc = run_job(PRELUDE + RESUME_JOB, args=["first"], timeout=120)
    assert proc.returncode != 0 and "RESULT" not in proc.stdout, proc.stdout + proc.stderr
    r, _ = run(run_job, RESUME_JOB, args=["second"], timeout=120)
    assert r["can"] and not r["cannot"]
    assert r["n"] == 6 and r["errors"] == 0 and r["dirs"] == 6
    finished = r["finished_at_kill"]
    assert len(finished) >= 3 and 4 not in finished
    assert set(finished) <= set(r["saved"]) and 4 not in r["saved"]
    for k, (last, iterations, starts) in r["trials"].items():
        assert last == 5 and iterations == [1, 2, 3, 4, 5], k  # none lost, none run twice
        if int(k) in finished:
            assert starts == ["0"], k  # finished before the kill: kept, not run again
    assert r["trials"]["4"][2] == ["0", "2"]  # continued from its last checkpoint


# -- preemption: the sweep saves on the signal, the next run restores and goes on ------------
PREEMPTED_SWEEP = '''
# ASHA (or argv[3] "hyperband") over 8 trials, one at a time (so its decisions follow from the
# order alone). Trial k=3 announces iteration 3 and then slows down: the job is preempted there,
# by the test (argv[1] "slurm": scancel) or by the trial itself ("self": SIGTERM to the head);
# "none": not preempted. Run again in the same folder (Slurm's requeue does that) it restores
# the sweep and finishes it. The trainable (argv[2]) is a "function" reporting a checkpoint
# each time, or a "class" Trainable that saves one only when asked (on a pause or preemption).
import json
import os
import signal
import sys
import time

import hpcray
from hpcray import tune

hpcray.init()
MODE, KIND, SCHEDULER = (sys.argv[1:] + ["function", "asha"])[:3]
HERE = os.path.dirname(os.path.abspath(__file__))
HEAD = str(os.getpid())
with open(os.path.join(HERE, "head.pid"), "w") as f:
    f.write(HEAD)
if MODE == "slurm":  # the pattern slurm/tune_sweep.py shows
    PATH = os.path.join(hpcray.get_runtime_context().get_state_dir(), "sweep")
else:
    PATH = os.path.join(HERE, "results", "baseline" if MODE == "none" else "sweep")
SCORES = %SCORES%


def preempt_here(k, i):
    """Trial 3 from iteration 3 on, in the run that is preempted: announced, slowed down."""
    if MODE == "none" or k != 3 or i < 3:
        return
    with open(os.path.join(HERE, "head.pid")) as f:
        head = f.read()
    flag = os.path.join(HERE, "preempted.pid")
    if not os.path.exists(flag):
        with open(flag, "w") as f:
            f.write(head)
        print("trial k=3 at iteration 3", flush=True)
        if MODE == "self":
            os.kill(int(head), signal.SIGTERM)
    with open(flag) as f:
        if f.read() == head:
            time.sleep(1.0)  # the signal has 7 s to arrive before trial 3 ends


def function(config):
    k = config["k"]
    start = tune.get_checkpoint()
    begin = start.to_dict()["i"] if start else 0
    for i in range(begin + 1, 10):
        preempt_here(k, i)
        tune.report({"score": SCORES[k] * i}, checkpoint=tune.Checkpoint.from_dict({"i": i}))


class Climb(tune.Trainable):
    def setup(self, config):
        self.k, self.i = config["k"], 0

    def step(self):
        self.i += 1
        preempt_here(self.k, self.i)
        return {"score": SCORES[self.k] * self.i}

    def save_checkpoint(self, folder):
        return {"i": self.i}

    def load_checkpoint(self, state):
        self.i = state["i"]


train = Climb if KIND == "class" else function


restored = tune.Tuner.can_restore(PATH)
if restored:
    tuner = tune.Tuner.restore(PATH, train)
else:
    tuner = tune.Tuner(
        train, param_space={"k": tune.grid_search(list(range(8)))},
        tune_config=tune.TuneConfig(
            metric="score", mode="max", max_concurrent_trials=1,
            scheduler=tune.HyperBandScheduler(max_t=9, reduction_factor=3)
            if SCHEDULER == "hyperband" else
            tune.ASHAScheduler(max_t=9, grace_period=1, reduction_factor=3)),
        run_config=tune.RunConfig(storage_path=os.path.dirname(PATH),
                                  name=os.path.basename(PATH), verbose=0))
grid = tuner.fit()
R = {"restored": restored, "errors": grid.num_errors, "trials": {}}
for r in grid:
    with open(os.path.join(r.path, "result.json")) as f:
        rows = [json.loads(line) for line in f]
    R["trials"][r.config["k"]] = {
        "iterations": [row["training_iteration"] for row in rows],
        "starts": [row["training_iteration"] - 1 for row in rows
                   if row["iterations_since_restore"] == 1]}
print("RESULT " + json.dumps(R), flush=True)
'''
PREEMPTED_SCORES = [1.0, 0.0, 2.0, 5.0, 0.5, 3.0, 4.0, 1.5]
PREEMPTED_SWEEP = PREEMPTED_SWEEP.replace("%SCORES%", repr(PREEMPTED_SCORES))


def check_preempted_sweep(out: dict) -> None:
    """The restored run finished the sweep as an uninterrupted one would have: ASHA stopped
    each trial where it stops it without the preemption; no iteration lost or run twice; the
    trials finished before the signal kept, trial 3 continued from its last checkpoint."""
    from hpcray.tune import schedulers as S
    from hpcray.tune.trial import Trial

    asha = S.ASHAScheduler(metric="score", mode="max", max_t=9, grace_period=1,
                           reduction_factor=3)
    expected = {}
    for k, score in enumerate(PREEMPTED_SCORES):
        trial = Trial(str(k), {"k": k})
        asha.on_trial_add(trial)
        for i in range(1, 10):
            result = {"score": score * i, "training_iteration": i}
            if asha.on_trial_result(trial, result) == S.STOP:
                asha.on_trial_complete(trial, result)
                expected[str(k)] = i
                break
    assert sorted(expected.values()) != [9] * 8, "ASHA stops no trial early: nothing to check"
    assert out["restored"] and out["errors"] == 0, out
    trials = out["trials"]
    assert sorted(trials) == [str(k) for k in range(8)], trials
    for k, trial in trials.items():
        assert trial["iterations"] == list(range(1, expected[k] + 1)), (k, trial, expected)
        if k != "3":
            assert trial["starts"] == [0], (k, trial)  # ran once: before or after the signal
    first, resumed = trials["3"]["starts"]
    assert first == 0 and resumed >= 3, trials["3"]  # from its checkpoint at the preemption


def _result(proc) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and len(lines) == 1, proc.stdout + proc.stderr
    return json.loads(lines[0][len("RESULT "):])


def _preempt_and_restore(run_job, *args: str) -> dict:
    """Runs PREEMPTED_SWEEP until its trial signals the head, then again; the second run's
    result."""
    proc = run_job(PREEMPTED_SWEEP, n=3, timeout=120, args=["self", *args])
    assert proc.returncode == 143 and "RESULT" not in proc.stdout, proc.stdout + proc.stderr
    assert "hpcray: SIGTERM received: running 1 on_preempt callback(s)" in proc.stderr
    assert "hpcray.tune: preempted: saved the experiment" in proc.stderr, proc.stderr
    return _result(run_job(PREEMPTED_SWEEP, n=3, timeout=120, args=["self", *args]))


@pytest.mark.parametrize("kind", ["function", "class"])
def test_preempted_sweep_saves_and_restores(run_job, kind):
    """SIGTERM to the head mid-sweep (no Slurm): the sweep saves its state in the on_preempt
    callback, the job ends; the same script run again restores it and finishes it."""
    check_preempted_sweep(_preempt_and_restore(run_job, kind, "asha"))


def test_preempted_hyperband_sweep_decides_as_an_uninterrupted_one(run_job):
    """HyperBand, preempted while trial 3 pauses at a milestone: restored, its brackets and
    paused trials go on as in the same sweep run without a preemption."""
    baseline = _result(run_job(PREEMPTED_SWEEP, n=3, timeout=120,
                               args=["none", "function", "hyperband"]))
    restored = _preempt_and_restore(run_job, "function", "hyperband")
    assert restored["restored"] and not baseline["restored"]
    assert restored["errors"] == baseline["errors"] == 0
    assert restored["trials"] == baseline["trials"]  # iterations and where each (re)started
    assert sorted(len(t["iterations"]) for t in baseline["trials"].values()) != [9] * 8


# -- an hpcray.train trainer as the trainable -------------------------------------------------
TRAINER_SWEEP = '''
import tempfile

import numpy as np

import hpcray.collective as col
from hpcray import train, tune
from hpcray.train import DataParallelTrainer, ScalingConfig

hpcray.init()
HERE = os.path.dirname(os.path.abspath(__file__))


def loop(config):
    ctx = train.get_context()
    start = train.get_checkpoint()
    begin = 0
    if start is not None:
        with open(os.path.join(start.path, "step")) as f:
            begin = int(f.read())
    if ctx.get_world_rank() == 0:
        with open(os.path.join(ctx.get_trial_dir(), "starts.log"), "a") as f:
            f.write(f"{begin}\\n")
    for step in range(begin + 1, 1000):  # ASHA stops every trial by max_t=6
        time.sleep(0.02)
        if config["lr"] == 0.1 and step == 3 and not os.path.exists(os.path.join(HERE, "failed")):
            if ctx.get_world_rank() == 1:
                open(os.path.join(HERE, "failed"), "w").close()
                raise ValueError("worker 1 fails once")
        total = np.array([config["lr"]])
        col.allreduce(total)  # a stopped trial's workers are aborted, not left in here
        checkpoint = None
        if ctx.get_world_rank() == 0:
            folder = tempfile.mkdtemp()
            with open(os.path.join(folder, "step"), "w") as f:
                f.write(str(step))
            checkpoint = train.Checkpoint.from_directory(folder)
        train.report({"loss": config["lr"] * 10 / step, "world": round(total[0] / config["lr"]),
                      "base": config["base"]}, checkpoint=checkpoint)


trainer = DataParallelTrainer(loop, train_loop_config={"base": 7},
                              scaling_config=ScalingConfig(num_workers=2))
grid = tune.Tuner(
    trainer, param_space={"train_loop_config": {"lr": tune.grid_search([0.1, 0.2, 0.3, 0.4])}},
    tune_config=tune.TuneConfig(metric="loss", mode="min", scheduler=tune.ASHAScheduler(
        max_t=6, grace_period=2, reduction_factor=2)),
    run_config=tune.RunConfig(storage_path=os.path.join(HERE, "results"), name="trainer",
                              failure_config=tune.FailureConfig(max_failures=1), verbose=0),
).fit()
R = {"n": len(grid), "errors": grid.num_errors, "trials": {}}
for r in grid:
    rows = [json.loads(line) for line in open(os.path.join(r.path, "result.json"))]
    with open(os.path.join(r.checkpoint.path, "step")) as f:
        saved = int(f.read())
    starts = open(os.path.join(r.path, "train", "starts.log")).read().split()
    R["trials"][str(r.config["train_loop_config"]["lr"])] = {
        "iterations": [row["training_iteration"] for row in rows],
        "world": sorted({row["world"] for row in rows}), "base": r.metrics["base"],
        "checkpoint": saved, "starts": starts}
R["best"] = grid.get_best_result().config["train_loop_config"]["lr"]
R["cpus_free"] = poll(lambda: hpcray.available_resources().get("CPU") == 4.0)
emit(R)
'''


def test_a_trainer_as_the_trainable(run_job):
    """Tuner(DataParallelTrainer(...)): each trial a 2-worker gang (5 ranks: 2 trials at once),
    whose allreduce sums its own 2 workers' values only (each trainer's group "default" in a
    scope of its own); each train report a Tune report with its checkpoint; ASHA stops
    trainers early (their workers are aborted in their allreduce, the job ends cleanly); a failed
    trainer (the best one, which ASHA never stops) is retried from the trial's checkpoint."""
    r, _ = run(run_job, TRAINER_SWEEP, n=5, timeout=180)
    assert r["n"] == 4 and r["errors"] == 0 and r["best"] == 0.1, r
    trials = r["trials"]
    assert trials["0.1"]["iterations"] == [1, 2, 3, 4, 5, 6]
    assert any(len(t["iterations"]) < 6 for t in trials.values()), trials  # ASHA stopped some
    for lr, t in trials.items():
        n = len(t["iterations"])
        assert t["iterations"] == list(range(1, n + 1)) and n >= 2, (lr, t)
        assert t["world"] == [2] and t["base"] == 7 and t["checkpoint"] == n, (lr, t)
        if lr != "0.1":
            assert t["starts"] == ["0"], (lr, t)
    assert trials["0.1"]["starts"] == ["0", "2"], trials["0.1"]  # retried from its checkpoint
    assert r["cpus_free"]  # every trainer's workers were released
