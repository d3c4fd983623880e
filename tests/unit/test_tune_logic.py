"""Tune's pure logic in-process: search spaces, searchers, schedulers, results, storage."""

from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest

from hpcray import tune
from hpcray.tune import schedulers as S
from hpcray.tune.progress import ProgressReporter, render
from hpcray.tune.result import Result, ResultGrid
from hpcray.tune.search import (
    FINISHED,
    BasicVariantGenerator,
    ConcurrencyLimiter,
    count_variants,
    generate_variants,
)
from hpcray.tune.storage import ExperimentStorage
from hpcray.tune.trial import PAUSED, PENDING, RUNNING, TERMINATED, Trial


def configs(space: dict, num_samples: int = 1, seed: int | None = 0, **kwargs) -> list[dict]:
    gen = BasicVariantGenerator(random_state=seed, **kwargs)
    gen.set_search_properties(None, None, space, num_samples=num_samples)
    out = []
    while True:
        config = gen.suggest(f"t{len(out)}")
        if config == FINISHED:
            return out
        out.append(config)


# -- search spaces ------------------------------------------------------------------------------

def test_grid_expansion_counts_and_order():
    space = {"a": tune.grid_search([1, 2, 3]), "nested": {"b": tune.grid_search(["x", "y"])},
             "c": 7}
    assert count_variants(space) == 6
    out = configs(space, num_samples=2)
    assert len(out) == 12
    # the first grid parameter changes fastest (Ray's order); each sample repeats the grid
    assert [(c["a"], c["nested"]["b"]) for c in out[:6]] == [
        (1, "x"), (2, "x"), (3, "x"), (1, "y"), (2, "y"), (3, "y")]
    assert out[:6] == out[6:]
    assert all(c["c"] == 7 for c in out)


def test_seeded_sampling_is_reproducible():
    space = {"lr": tune.loguniform(1e-4, 1e-1), "units": tune.choice([16, 32, 64]),
             "drop": tune.uniform(0, 0.5), "g": tune.grid_search([1, 2])}
    assert configs(space, 10, seed=7) == configs(space, 10, seed=7)
    assert configs(space, 10, seed=7) != configs(space, 10, seed=8)


def test_domains_stay_in_their_ranges():
    rng = random.Random(1)
    for _ in range(2000):
        assert 2 <= tune.uniform(2, 3).sample(rng) <= 3
        v = tune.quniform(0, 1, 0.25).sample(rng)
        assert v in (0, 0.25, 0.5, 0.75, 1.0)
        assert 1e-4 <= tune.loguniform(1e-4, 1e-2).sample(rng) <= 1e-2
        assert tune.randint(0, 3).sample(rng) in (0, 1, 2)  # upper bound excluded
        assert tune.qrandint(0, 20, 5).sample(rng) % 5 == 0
        assert 1 <= tune.lograndint(1, 1000).sample(rng) < 1000
        assert tune.choice("abc").sample(rng) in "abc"
    draws = [tune.randn(10, 2).sample(rng) for _ in range(4000)]
    assert abs(np.mean(draws) - 10) < 0.2 and abs(np.std(draws) - 2) < 0.2
    logs = np.log10([tune.loguniform(1e-4, 1).sample(rng) for _ in range(4000)])
    assert abs(np.mean(logs) + 2) < 0.1  # uniform in log space: mean exponent -2
    assert {tune.randint(0, 3).sample(rng) for _ in range(200)} == {0, 1, 2}


def test_sample_from_sees_the_other_parameters():
    space = {"a": tune.grid_search([1, 2]), "b": tune.sample_from(lambda spec: spec.config.a * 10),
             "c": tune.sample_from(lambda spec: spec.config["a"] + 1)}
    assert [(c["a"], c["b"], c["c"]) for c in configs(space)] == [(1, 10, 2), (2, 20, 3)]


def test_bad_search_spaces_say_where():
    with pytest.raises(ValueError, match="lower bound"):
        tune.uniform(5, 1)
    with pytest.raises(ValueError, match="positive"):
        tune.loguniform(0, 1)
    with pytest.raises(ValueError, match="at least one"):
        tune.grid_search([])
    with pytest.raises(ValueError, match="opt/lr"):
        count_variants({"opt": {"lr": {"grid_search": 0.1}}})
    with pytest.raises(TypeError, match="x: Float is a class"):
        count_variants({"x": tune.search.sample.Float})
    with pytest.raises(ValueError, match="b: sample_from raised ZeroDivisionError"):
        generate_variants({"b": tune.sample_from(lambda spec: 1 / 0)}, random.Random(0))
    with pytest.raises(tune.TuneError, match="bad search space"):
        tune.Tuner(lambda c: None, param_space={"a": {"grid_search": []}})


def test_points_to_evaluate_come_first():
    space = {"a": tune.uniform(0, 1), "b": tune.choice([1, 2])}
    out = configs(space, num_samples=3, points_to_evaluate=[{"a": 0.5}, {"a": 0.25, "b": 9}])
    assert len(out) == 5
    assert out[0]["a"] == 0.5 and out[0]["b"] in (1, 2)
    assert out[1] == {"a": 0.25, "b": 9}


def test_concurrency_limiter_holds_back_suggestions():
    gen = BasicVariantGenerator(random_state=0)
    limiter = ConcurrencyLimiter(gen, max_concurrent=2)
    limiter.set_search_properties("m", "max", {"x": tune.uniform(0, 1)}, num_samples=4)
    assert isinstance(limiter.suggest("t0"), dict)
    assert isinstance(limiter.suggest("t1"), dict)
    assert limiter.suggest("t2") is None
    limiter.on_trial_complete("t0", {"m": 1})
    assert isinstance(limiter.suggest("t2"), dict)
    assert limiter.suggest("t3") is None
    limiter.on_trial_complete("t1")
    limiter.on_trial_complete("t2")
    assert isinstance(limiter.suggest("t3"), dict)
    limiter.on_trial_complete("t3")
    assert limiter.suggest("t4") == FINISHED
    with pytest.raises(ValueError):
        ConcurrencyLimiter(gen, 0)


# -- schedulers ---------------------------------------------------------------------------------

def trial(i: int, **config) -> Trial:
    return Trial(trial_id=f"t{i}", config=config, index=i, status=RUNNING)


def test_asha_rungs_follow_the_published_rule():
    asha = S.AsyncHyperBandScheduler(metric="acc", mode="max", max_t=9, grace_period=1,
                                     reduction_factor=3)
    n = int(np.log(9) / np.log(3) + 1)
    assert [m for m, _ in asha.brackets[0].rungs] == [3 ** k for k in reversed(range(n))]
    trials = [trial(i) for i in range(6)]
    for t in trials:
        asha.on_trial_add(t)
    # rung 1: a trial goes on only if at or above the 66.7th percentile of those recorded
    scores = [1.0, 2.0, 0.5, 1.9, 3.0, 1.2]
    decisions, recorded = [], []
    for t, s in zip(trials, scores):
        cutoff = np.nanpercentile(recorded, (1 - 1 / 3) * 100) if recorded else None
        expected = S.STOP if cutoff is not None and s < cutoff else S.CONTINUE
        decisions.append(asha.on_trial_result(t, {"training_iteration": 1, "acc": s}))
        assert decisions[-1] == expected
        recorded.append(s)
    assert decisions == [S.CONTINUE, S.CONTINUE, S.STOP, S.CONTINUE, S.CONTINUE, S.STOP]
    # a trial reporting again between rungs goes on; at rung 3 it is compared with rung 3 only
    assert asha.on_trial_result(trials[1], {"training_iteration": 2, "acc": 0.0}) == S.CONTINUE
    assert asha.on_trial_result(trials[1], {"training_iteration": 3, "acc": 5.0}) == S.CONTINUE
    assert asha.on_trial_result(trials[3], {"training_iteration": 3, "acc": 4.0}) == S.STOP
    assert asha.on_trial_result(trials[4], {"training_iteration": 3, "acc": 6.0}) == S.CONTINUE
    # max_t ends every trial
    assert asha.on_trial_result(trials[4], {"training_iteration": 9, "acc": 9.0}) == S.STOP


def test_asha_min_mode_and_rung_layout():
    asha = S.ASHAScheduler(metric="loss", mode="min", max_t=100, grace_period=1,
                           reduction_factor=4)
    assert [m for m, _ in asha.brackets[0].rungs] == [64, 16, 4, 1]
    t0, t1 = trial(0), trial(1)
    assert asha.on_trial_result(t0, {"training_iteration": 1, "loss": 1.0}) == S.CONTINUE
    assert asha.on_trial_result(t1, {"training_iteration": 1, "loss": 2.0}) == S.STOP
    with pytest.raises(ValueError):
        S.ASHAScheduler(reduction_factor=1)
    two = S.ASHAScheduler(metric="m", mode="max", max_t=81, grace_period=1, reduction_factor=3,
                          brackets=2)
    # Ray's formula: int(log(max_t / grace) / log(rf) - s + 1) rungs at grace * rf**(k + s)
    for s, bracket in enumerate(two.brackets):
        n = int(np.log(81) / np.log(3) - s + 1)
        assert [m for m, _ in bracket.rungs] == [3 ** (k + s) for k in reversed(range(n))]


def test_median_stopping_rule():
    rule = S.MedianStoppingRule(time_attr="training_iteration", metric="m", mode="max",
                                grace_period=2, min_samples_required=2)
    good = [trial(i) for i in range(2)]
    for it in range(1, 5):
        for t in good:
            assert rule.on_trial_result(t, {"training_iteration": it, "m": 10.0 + it}) \
                == S.CONTINUE
    bad = trial(9)
    assert rule.on_trial_result(bad, {"training_iteration": 1, "m": 0.0}) == S.CONTINUE  # grace
    assert rule.on_trial_result(bad, {"training_iteration": 2, "m": 1.0}) == S.STOP
    fine = trial(8)
    rule.on_trial_result(fine, {"training_iteration": 1, "m": 50.0})
    assert rule.on_trial_result(fine, {"training_iteration": 2, "m": 60.0}) == S.CONTINUE


def pbt_population(n: int, **kwargs) -> tuple[S.PopulationBasedTraining, list[Trial]]:
    pbt = S.PopulationBasedTraining(time_attr="training_iteration", metric="score", mode="max",
                                    perturbation_interval=2, seed=0, **kwargs)
    trials = []
    for i in range(n):
        t = trial(i, lr=0.1 * (i + 1), opt="sgd")
        t.checkpoint = f"/ckpt/{i}"
        pbt.on_trial_add(t)
        trials.append(t)
    return pbt, trials


def test_pbt_quantiles():
    pbt, trials = pbt_population(8, hyperparam_mutations={"lr": tune.uniform(0, 1)})
    for i, t in enumerate(trials):
        pbt.on_trial_result(t, {"training_iteration": 1, "score": float(i)})
    lower, upper = pbt.quantiles()
    assert [t.trial_id for t in lower] == ["t0", "t1"]  # ceil(8 * 0.25) = 2
    assert [t.trial_id for t in upper] == ["t6", "t7"]
    pbt3, trials3 = pbt_population(3, hyperparam_mutations={"lr": [1, 2]},
                                   quantile_fraction=0.5)
    for i, t in enumerate(trials3):
        pbt3.on_trial_result(t, {"training_iteration": 1, "score": float(i)})
    lower, upper = pbt3.quantiles()
    assert len(lower) == len(upper) == 1  # ceil(1.5) = 2, capped at half the population
    single, (only,) = pbt_population(1, hyperparam_mutations={"lr": [1]})
    single.on_trial_result(only, {"training_iteration": 1, "score": 1.0})
    assert single.quantiles() == ([], [])


def test_pbt_exploits_a_top_trial_and_explores():
    pbt, trials = pbt_population(
        4, hyperparam_mutations={"lr": tune.uniform(0, 1), "opt": ["sgd", "adam", "rms"]},
        resample_probability=0.0)
    for i, t in enumerate(trials):
        assert pbt.on_trial_result(t, {"training_iteration": 1, "score": float(i)}) == S.CONTINUE
    for i, t in enumerate(trials[1:], 1):  # everyone but t0 reaches the interval first
        pbt.on_trial_result(t, {"training_iteration": 2, "score": float(i)})
    worst = trials[0]
    decision = pbt.on_trial_result(worst, {"training_iteration": 2, "score": -1.0})
    assert decision == S.EXPLOIT
    assert worst.extra["exploited"] == "t3" and worst.extra["restore_from"] == "/ckpt/3"
    donor_lr = trials[3].config["lr"]
    assert math.isclose(worst.config["lr"], donor_lr * 1.2) or \
        math.isclose(worst.config["lr"], donor_lr * 0.8)
    assert worst.config["opt"] in ("adam", "sgd")  # a neighbour of sgd, clamped
    assert pbt.num_perturbations == 1
    # inside the interval nothing happens
    assert pbt.on_trial_result(worst, {"training_iteration": 3, "score": -5.0}) == S.CONTINUE
    # the top trial is never exploited
    assert pbt.on_trial_result(trials[3], {"training_iteration": 4, "score": 9.0}) == S.CONTINUE
    with pytest.raises(ValueError, match="hyperparam_mutations"):
        S.PopulationBasedTraining(metric="m", mode="max")


def test_pbt_resample_and_integers():
    pbt = S.PopulationBasedTraining(metric="m", mode="max", seed=3,
                                    hyperparam_mutations={"n": [1, 2, 3], "k": tune.randint(1, 5)},
                                    resample_probability=1.0)
    new = pbt.explore({"n": 2, "k": 10})
    assert new["n"] in (1, 2, 3) and 1 <= new["k"] < 5
    pbt.resample_probability = 0.0
    assert pbt.explore({"n": 1, "k": 10})["k"] in (12, 8)


def test_fifo_picks_pending_then_paused():
    fifo = S.FIFOScheduler()
    a, b, c = Trial("a", {}, status=PAUSED), Trial("b", {}, status=PENDING), \
        Trial("c", {}, status=TERMINATED)
    assert fifo.choose_trial_to_run([a, b, c]) is b
    assert fifo.choose_trial_to_run([a, c]) is a
    assert fifo.choose_trial_to_run([c]) is None


# -- results, storage, progress -----------------------------------------------------------------

def test_result_grid_best_and_errors(tmp_path):
    results = [Result({"acc": 0.5}, {"x": 1}, None, str(tmp_path / "a"), trial_id="a"),
               Result({"acc": 0.9}, {"x": 2}, None, str(tmp_path / "b"), trial_id="b"),
               Result({"acc": float("nan")}, {"x": 3}, None, str(tmp_path / "c"),
                      trial_id="c"),
               Result({}, {"x": 4}, None, str(tmp_path / "d"), error=RuntimeError("boom"),
                      trial_id="d")]
    grid = ResultGrid(results, str(tmp_path), "acc", "max")
    assert len(grid) == 4 and grid[1].trial_id == "b"
    assert [r.trial_id for r in grid] == ["a", "b", "c", "d"]
    assert grid.get_best_result().trial_id == "b"
    assert grid.get_best_result("acc", "min").trial_id == "a"
    assert grid.num_errors == 1 and str(grid.errors[0]) == "boom"
    with pytest.raises(ValueError, match="mode"):
        grid.get_best_result("acc", "up")
    with pytest.raises(RuntimeError, match="no trial reported"):
        grid.get_best_result("loss", "min")
    os.makedirs(tmp_path / "a")
    with open(tmp_path / "a" / "result.json", "w") as f:
        f.write(json.dumps({"acc": 0.95, "training_iteration": 1}) + "\n")
        f.write(json.dumps({"acc": 0.5, "training_iteration": 2}) + "\n")
    assert grid.get_best_result(scope="all").trial_id == "a"


def test_storage_restore_reads_back_trials(tmp_path):
    storage = ExperimentStorage(str(tmp_path / "exp"))
    done = Trial("t0", {"x": 1}, 0, local_path=str(tmp_path / "exp" / "f_t0"))
    cut = Trial("t1", {"x": 2, "f": print}, 1, local_path=str(tmp_path / "exp" / "f_t1"))
    for t in (done, cut):
        storage.write_params(t)
        for it in range(1, 6):
            storage.append_result(t, {"m": it, "training_iteration": it, "config": t.config})
    done.status = TERMINATED
    done.last_result = {"m": 5, "training_iteration": 5}
    storage.close_results(done)
    storage.close_results(cut)
    storage.write_trial_state(done)
    storage.flush()
    for it in (2, 4):
        os.makedirs(os.path.join(cut.local_path, f"checkpoint_{it:06d}"))
    os.makedirs(os.path.join(cut.local_path, "checkpoint_000005.tmp"))  # cut off mid-write
    with open(os.path.join(cut.local_path, "result.json"), "a") as f:
        f.write('{"m": 6, "training_it')  # cut off mid-line
    loaded = storage.load_trials()
    assert [t.trial_id for t in loaded] == ["t0", "t1"]
    assert loaded[0].status == TERMINATED and loaded[0].last_result["m"] == 5
    again = loaded[1]
    assert again.status == PENDING and again.config["f"] is print
    assert again.checkpoint.endswith("checkpoint_000004") and again.iteration == 4
    with open(os.path.join(cut.local_path, "result.json")) as f:
        assert [json.loads(line)["training_iteration"] for line in f] == [1, 2, 3, 4]
    with open(os.path.join(cut.local_path, "progress.csv")) as f:
        rows = f.read().splitlines()
    assert rows[0] == "m,training_iteration" and len(rows) == 5


def test_status_table_and_quiet_reporter(capsys):
    trials = [Trial("a", {"lr": 0.1}, 0, status=TERMINATED, last_result={"acc": 0.7},
                    iteration=3),
              Trial("b", {"lr": 0.2}, 1, status=RUNNING, last_result={"acc": 0.9}, iteration=2),
              Trial("c", {"lr": 0.3}, 2)]
    text = render(trials, 12.3, "acc", "max")
    assert "3 trials (1 PENDING, 1 RUNNING, 1 TERMINATED)" in text
    assert "elapsed 12.3 s" in text and "Best so far: b acc=0.9" in text
    ProgressReporter(verbose=0).update(trials, 1.0, "acc", "max", force=True)
    ProgressReporter(verbose=1).update(trials, 1.0, "acc", "max", force=True)  # not a TTY
    assert capsys.readouterr().out == ""
    ProgressReporter(verbose=1).summary(trials, 1.0, "acc", "max")
    assert "Tune finished" in capsys.readouterr().out


def test_optuna_search_finds_the_optimum():
    pytest.importorskip("optuna")
    from hpcray.tune.search.optuna import OptunaSearch

    search = OptunaSearch(seed=0, points_to_evaluate=[{"opt": {"x": 1.0}}])
    space = {"opt": {"x": tune.uniform(-5, 5)}, "n": tune.randint(1, 4),
             "kind": tune.choice(["a", "b"]), "fixed": 3}
    search.set_search_properties("loss", "min", space, num_samples=40)
    seen = []
    for i in range(40):
        config = search.suggest(f"t{i}")
        assert config["fixed"] == 3 and config["n"] in (1, 2, 3) and config["kind"] in "ab"
        loss = (config["opt"]["x"] - 2) ** 2 + (config["kind"] == "b")
        search.on_trial_complete(f"t{i}", {"loss": loss})
        seen.append(config)
    assert seen[0]["opt"]["x"] == 1.0  # points_to_evaluate first
    assert search.suggest("t40") == FINISHED
    best = search.study.best_params
    assert abs(best["opt/x"] - 2) < 0.5 and best["kind"] == "a"
    limited = ConcurrencyLimiter(OptunaSearch(seed=1), max_concurrent=1)
    limited.set_search_properties("loss", "min", {"x": tune.uniform(0, 1)}, num_samples=3)
    assert isinstance(limited.suggest("a"), dict) and limited.suggest("b") is None
    with pytest.raises(ValueError, match="grid_search"):
        OptunaSearch().set_search_properties("m", "max", {"g": tune.grid_search([1, 2])})
    with pytest.raises(ValueError, match="cannot sample"):
        OptunaSearch().set_search_properties("m", "max", {"r": tune.randn()})


def test_hyperband_brackets_and_successive_halving():
    hb = S.HyperBandScheduler(metric="acc", mode="max", max_t=9, reduction_factor=3)
    # Ray's shapes: s_max + 1 = 3 brackets; n0 = ceil(3 / (s + 1) * 3**s), r0 = 9 * 3**-s
    assert [hb.bracket_shape(s) for s in (2, 1, 0)] == [(9, 1), (5, 3), (3, 9)]
    trials = [trial(i) for i in range(9)]
    for t in trials:
        hb.on_trial_add(t)
    assert len(hb.brackets) == 1 and hb.brackets[0].milestone == 1
    # each trial pauses at the milestone until the whole bracket got there
    for i, t in enumerate(trials[:-1]):
        assert hb.on_trial_result(t, {"training_iteration": 1, "acc": float(i)}) == S.PAUSE
        t.status = PAUSED
    assert hb.choose_trial_to_run(trials) is None  # nobody promoted yet
    last = trials[-1]
    assert hb.on_trial_result(last, {"training_iteration": 1, "acc": 100.0}) == S.CONTINUE
    # the best 9 / 3 = 3 go on (the last one at once, 7 and 6 resumed); the others end
    assert {t.trial_id for t in hb.take_stopped()} == {f"t{i}" for i in range(6)}
    assert hb.choose_trial_to_run(trials).trial_id in ("t6", "t7")
    assert hb.brackets[0].milestone == 3
    # a tenth trial opens the next bracket
    extra = trial(9)
    hb.on_trial_add(extra)
    assert len(hb.brackets) == 2 and hb.brackets[1].n0 == 5 and hb.brackets[1].milestone == 3
    assert hb.on_trial_result(extra, {"training_iteration": 9, "acc": 0.0}) == S.STOP  # max_t


def test_hyperband_waits_for_a_full_bracket_or_the_end_of_the_search():
    hb = S.HyperBandScheduler(metric="acc", mode="max", max_t=9, reduction_factor=3)
    first = [trial(i) for i in range(2)]
    for t in first:
        hb.on_trial_add(t)
    assert hb.on_trial_result(first[0], {"training_iteration": 1, "acc": 1.0}) == S.PAUSE
    first[0].status = PAUSED
    # the bracket holds 9: the second one at the milestone does not complete it
    assert hb.on_trial_result(first[1], {"training_iteration": 1, "acc": 2.0}) == S.PAUSE
    first[1].status = PAUSED
    hb.on_search_finished()  # only these two will ever come: halve them now
    assert hb.choose_trial_to_run(first) is first[1]
    assert hb.take_stopped() == [first[0]]


def test_result_grid_dataframe(tmp_path):
    pytest.importorskip("pandas")
    grid = ResultGrid([Result({"acc": 0.5, "training_iteration": 2}, {"x": {"y": 1}}, None,
                              str(tmp_path / "a"), trial_id="a"),
                       Result({"acc": 0.9, "training_iteration": 1}, {"x": {"y": 2}}, None,
                              str(tmp_path / "b"), trial_id="b")], str(tmp_path), "acc", "max")
    frame = grid.get_dataframe()
    assert list(frame["acc"]) == [0.5, 0.9] and list(frame["config/x/y"]) == [1, 2]
    assert list(frame["logdir"]) == [str(tmp_path / "a"), str(tmp_path / "b")]
    os.makedirs(tmp_path / "a")
    rows = [{"acc": 0.7, "training_iteration": 1, "config": {}},
            {"acc": 0.5, "training_iteration": 2, "config": {}}]
    (tmp_path / "a" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert list(grid[0].metrics_dataframe["acc"]) == [0.7, 0.5]
    best = grid.get_dataframe(filter_metric="acc", filter_mode="max")
    assert list(best["acc"]) == [0.7, 0.9]


def test_num_samples_minus_one_never_finishes():
    gen = BasicVariantGenerator(random_state=0)
    gen.set_search_properties(None, None, {"x": tune.uniform(0, 1)}, num_samples=-1)
    assert all(isinstance(gen.suggest(f"t{i}"), dict) for i in range(500))
    assert gen.total_samples == float("inf")


# -- scheduler and searcher state across a restore ------------------------------------------------

def sweep(scheduler: S.TrialScheduler, searcher, restore_at: int | None = None,
          fresh_scheduler: S.TrialScheduler | None = None, max_t: int = 9) -> list[tuple]:
    """A small in-process driver: 3 trials at a time, one result per step, score = x * it.
    At step restore_at the scheduler and searcher go through pickle as the Tuner saves them,
    and the trials through their saved state, as Tuner.restore reads them back (or, with
    fresh_scheduler, the scheduler starts afresh: what a restore did before). Returns every
    decision made, with the trial's config at that point."""
    import cloudpickle

    trials: list[Trial] = []
    running: list[Trial] = []
    log, step, search_done = [], 0, False
    while True:
        while len(running) < 3:
            pick = None
            if not any(t.status == PENDING for t in trials) and not search_done:
                config = searcher.suggest(f"t{len(trials)}")
                if config == FINISHED:
                    search_done = True
                    scheduler.on_search_finished()
                elif isinstance(config, dict):
                    pick = Trial(f"t{len(trials)}", config, index=len(trials))
                    trials.append(pick)
                    scheduler.on_trial_add(pick)
            if pick is None:
                waiting = [t for t in trials if t.status in (PENDING, PAUSED)]
                pick = scheduler.choose_trial_to_run(waiting) if waiting else None
            if pick is None:
                break
            pick.status = RUNNING
            running.append(pick)
        if not running:
            return log
        t = running.pop(0)
        t.iteration += 1
        result = {"score": t.config["x"] * t.iteration, "training_iteration": t.iteration}
        t.last_result, t.checkpoint = result, f"ckpt/{t.trial_id}/{t.iteration}"
        searcher.on_trial_result(t.trial_id, result)
        decision = scheduler.on_trial_result(t, result) if t.iteration < max_t else S.STOP
        log.append((t.trial_id, t.iteration, decision, round(t.config["x"], 9)))
        ended = [t] if decision == S.STOP else []
        if decision in (S.CONTINUE, S.EXPLOIT):
            running.append(t)
        elif decision == S.PAUSE:
            t.status = PAUSED
        ended += [s for s in scheduler.take_stopped() if s.status == PAUSED]
        for e in ended:
            e.status = TERMINATED
            scheduler.on_trial_complete(e, e.last_result)
            searcher.on_trial_complete(e.trial_id, e.last_result)
        step += 1
        if step == restore_at:
            blob = cloudpickle.dumps({"scheduler": scheduler, "searcher": searcher})
            saved = [json.loads(json.dumps(t.state())) for t in trials]
            trials = [Trial.from_state(s) for s in saved]
            by_id = {t.trial_id: t for t in trials}
            running = [by_id[t.trial_id] for t in running]
            state = __import__("pickle").loads(blob)
            scheduler, searcher = state["scheduler"], state["searcher"]
            scheduler.attach(trials)
            if fresh_scheduler is not None:
                scheduler = fresh_scheduler
                for t in trials:
                    if not t.is_finished:
                        scheduler.on_trial_add(t)


def _searcher(kind: str):
    space = {"x": tune.uniform(0, 1)}
    if kind == "optuna":
        pytest.importorskip("optuna")
        from hpcray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=3)
    else:
        searcher = BasicVariantGenerator(random_state=3)
    searcher.set_search_properties("score", "max", space, num_samples=12)
    return searcher


SCHEDULERS = {
    "asha": lambda: S.ASHAScheduler(metric="score", mode="max", max_t=9, grace_period=1,
                                    reduction_factor=3, brackets=2, seed=5),
    "hyperband": lambda: S.HyperBandScheduler(metric="score", mode="max", max_t=9,
                                              reduction_factor=3),
    "median": lambda: S.MedianStoppingRule(time_attr="training_iteration", metric="score",
                                           mode="max", grace_period=2, min_samples_required=2),
    "pbt": lambda: S.PopulationBasedTraining(
        time_attr="training_iteration", metric="score", mode="max", perturbation_interval=2,
        hyperparam_mutations={"x": tune.uniform(0, 1)}, seed=5),
}


@pytest.mark.parametrize("kind", ["basic", "optuna"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_restored_scheduler_and_searcher_make_the_same_decisions(name, kind):
    make = SCHEDULERS[name]
    baseline = sweep(make(), _searcher(kind))
    assert any(d != S.CONTINUE for _, it, d, _ in baseline if it < 9), "nothing to compare"
    for restore_at in (7, 20, len(baseline) - 5):
        assert sweep(make(), _searcher(kind), restore_at=restore_at) == baseline, restore_at


def test_a_fresh_scheduler_after_restore_decides_differently():
    """What the saved state prevents: ASHA's rungs forgotten, later trials are judged anew."""
    make = SCHEDULERS["asha"]
    baseline = sweep(make(), _searcher("basic"))
    assert sweep(make(), _searcher("basic"), restore_at=41, fresh_scheduler=make()) != baseline


def test_a_trainer_trainable_takes_train_loop_config_and_its_workers_size_a_trial():
    from hpcray.train import DataParallelTrainer, ScalingConfig
    from hpcray.tune.controller import resources_of, runner_resources_of

    trainer = DataParallelTrainer(lambda config: None, scaling_config=ScalingConfig(
        num_workers=3, resources_per_worker={"CPU": 2, "GPU": 1}))
    tuner = tune.Tuner(trainer, param_space={"train_loop_config": {"lr": tune.uniform(0, 1)}})
    assert resources_of(tuner.trainable) == {"cpu": 6, "gpu": 3}  # how many trials fit at once
    assert runner_resources_of(tuner.trainable) == {"cpu": 0}  # the runner itself holds none
    with pytest.raises(tune.TuneError, match="only \\['train_loop_config'\\].*'lr'"):
        tune.Tuner(trainer, param_space={"lr": tune.uniform(0, 1)})
