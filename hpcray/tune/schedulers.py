"""Trial schedulers (Ray Tune's names): FIFO, ASHA, HyperBand, MedianStoppingRule,
PopulationBasedTraining.

Pure logic: each takes Trial records and result dicts and answers CONTINUE, PAUSE, STOP or
(PBT) EXPLOIT, which the driver's controller carries out. Nothing here touches MPI. A scheduler
pickles whole (the Tuner saves it for a restore), the Trial records it holds by id only.
"""

from __future__ import annotations

import copy
import math
import random
import statistics
from collections.abc import Callable

from .search.sample import Categorical, Domain
from .trial import PAUSED, PENDING, Trial

CONTINUE = "CONTINUE"
PAUSE = "PAUSE"
STOP = "STOP"
EXPLOIT = "EXPLOIT"  # PBT: the trial's config and checkpoint were replaced; restart it from them


class TrialScheduler:
    """Decides, at each result, whether a trial goes on; picks which waiting trial runs next."""

    CONTINUE, PAUSE, STOP = CONTINUE, PAUSE, STOP

    def __init__(self, metric: str | None = None, mode: str | None = None):
        if mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.metric = metric
        self.mode = mode

    def set_search_properties(self, metric: str | None, mode: str | None) -> bool:
        """The Tuner's metric and mode, unless the scheduler was given its own."""
        self.metric = self.metric or metric
        self.mode = self.mode or mode
        return True

    @property
    def needs_metric(self) -> bool:
        return False

    def _score(self, result: dict) -> float | None:
        """The result's metric, signed so that higher is better; None if missing."""
        value = result.get(self.metric)
        if value is None:
            return None
        return float(value) if self.mode != "min" else -float(value)

    def on_trial_add(self, trial: Trial) -> None:
        pass

    def on_trial_result(self, trial: Trial, result: dict) -> str:
        return CONTINUE

    def on_trial_complete(self, trial: Trial, result: dict | None) -> None:
        pass

    def on_trial_error(self, trial: Trial) -> None:
        pass

    def take_stopped(self) -> list[Trial]:
        """Paused trials this scheduler has since decided to end (HyperBand's losers)."""
        return []

    def on_search_finished(self) -> None:
        """The searcher will make no more trials."""

    def __getstate__(self) -> dict:
        """What a snapshot keeps (Tuner.restore makes the same decisions from it): everything
        but the Trial records in ``_trials``, kept by id and put back by attach()."""
        state = dict(self.__dict__)
        if isinstance(state.get("_trials"), dict):
            state["_trials"] = list(state["_trials"])
        return state

    def attach(self, trials: list[Trial]) -> None:
        """After a restore: the experiment's Trial records in place of the ids a snapshot kept."""
        ids = getattr(self, "_trials", None)
        if isinstance(ids, list):
            by_id = {t.trial_id: t for t in trials}
            self._trials = {tid: by_id[tid] for tid in ids if tid in by_id}

    def choose_trial_to_run(self, trials: list[Trial]) -> Trial | None:
        """The first pending trial, else the first paused one."""
        for status in (PENDING, PAUSED):
            for trial in trials:
                if trial.status == status:
                    return trial
        return None


class FIFOScheduler(TrialScheduler):
    """Runs every trial to the end, in the order they were made (the default)."""


def _percentile(values: list[float], q: float) -> float | None:
    """numpy's default (linear) quantile q in [0, 1] of values, NaNs ignored; None if empty."""
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return None
    pos = (len(values) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


class _Bracket:
    """ASHA rungs: milestones from max_t down to grace_period, each with the values recorded."""

    def __init__(self, min_t: float, max_t: float, reduction_factor: float, s: int,
                 stop_last_trials: bool):
        self.rf = reduction_factor
        max_rungs = int(math.log(max_t / min_t) / math.log(reduction_factor) + 1 - s)
        self.rungs = [(min_t * reduction_factor ** (k + s), {}) for k in reversed(range(max_rungs))]
        self.stop_last_trials = stop_last_trials

    def cutoff(self, recorded: dict) -> float | None:
        """The (1 - 1/rf) quantile of the recorded values, as numpy.nanpercentile computes it."""
        return _percentile(list(recorded.values()), 1 - 1 / self.rf)

    def on_result(self, trial_id: str, cur_iter: float, score: float | None) -> str:
        action = CONTINUE
        for milestone, recorded in self.rungs:
            if cur_iter >= milestone and trial_id in recorded and not self.stop_last_trials:
                break
            if cur_iter < milestone or trial_id in recorded:
                continue
            cutoff = self.cutoff(recorded)
            if cutoff is not None and score is not None and score < cutoff:
                action = STOP
            if score is not None:
                recorded[trial_id] = score
            break
        return action


class AsyncHyperBandScheduler(TrialScheduler):
    """ASHA (Li et al. 2018): at each rung a trial goes on only if its result is in the top
    1/reduction_factor of those recorded at that rung so far; no trial ever waits for others.

    Rungs sit at grace_period * reduction_factor**k below max_t (time_attr units).
    """

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: str | None = None, max_t: float = 100, grace_period: float = 1,
                 reduction_factor: float = 4, brackets: int = 1, stop_last_trials: bool = True,
                 seed: int | None = None):
        super().__init__(metric, mode)
        if grace_period <= 0 or max_t <= grace_period and max_t != grace_period:
            raise ValueError(f"need 0 < grace_period <= max_t, got {grace_period}, {max_t}")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        self.time_attr = time_attr
        self.max_t = max_t
        self.stop_last_trials = stop_last_trials
        self.brackets = [_Bracket(grace_period, max_t, reduction_factor, s, stop_last_trials)
                         for s in range(brackets)]
        self._rng = random.Random(seed)
        self._trial_bracket: dict[str, _Bracket] = {}
        self._counts = [0] * brackets

    @property
    def needs_metric(self) -> bool:
        return True

    def on_trial_add(self, trial: Trial) -> None:
        # Ray's bracket choice: softmax over the brackets' sizes
        sizes = [len(b.rungs) for b in self.brackets]
        weights = [math.exp(n - max(sizes)) for n in sizes]
        index = self._rng.choices(range(len(self.brackets)), weights=weights)[0]
        self._trial_bracket[trial.trial_id] = self.brackets[index]
        self._counts[index] += 1

    def on_trial_result(self, trial: Trial, result: dict) -> str:
        if trial.trial_id not in self._trial_bracket:
            self.on_trial_add(trial)
        cur_iter = result.get(self.time_attr, 0)
        if self.stop_last_trials and cur_iter >= self.max_t:
            return STOP
        return self._trial_bracket[trial.trial_id].on_result(
            trial.trial_id, cur_iter, self._score(result))

    def on_trial_complete(self, trial: Trial, result: dict | None) -> None:
        if result and trial.trial_id in self._trial_bracket:
            self._trial_bracket[trial.trial_id].on_result(
                trial.trial_id, result.get(self.time_attr, 0), self._score(result))


ASHAScheduler = AsyncHyperBandScheduler


class _HBBracket:
    """One HyperBand bracket: up to n0 trials, run to the milestone, then the best
    1/eta of them go on to milestone * eta."""

    def __init__(self, n0: int, r0: float, eta: float, max_t: float):
        self.n0, self.milestone, self.eta, self.max_t = n0, r0, eta, max_t
        self.live: list[str] = []  # ids of the trials still in the bracket
        self.scores: dict[str, float] = {}  # trials at the current milestone
        self.gone: set[str] = set()  # trials that left: stopped, finished or failed
        self.closed = False  # no more trials will come (the search is over)

    def finished(self) -> bool:
        """Every trial of the (full) bracket is at the milestone."""
        full = self.closed or len(self.live) + len(self.gone) >= self.n0
        return full and all(tid in self.scores for tid in self.live)


class HyperBandScheduler(TrialScheduler):
    """Synchronous HyperBand (Li et al. 2017): brackets of successive halving. In a bracket
    every trial runs to the milestone and pauses; once all have, the best 1/reduction_factor
    go on (resumed from their checkpoints) to a milestone reduction_factor times later, the
    others stop. Trainables should checkpoint (class API save_checkpoint, or report with a
    checkpoint), or a resumed trial starts over."""

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: str | None = None, max_t: float = 81, reduction_factor: float = 3,
                 stop_last_trials: bool = True):
        super().__init__(metric, mode)
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        self.time_attr = time_attr
        self.max_t = max_t
        self.eta = reduction_factor
        self.stop_last_trials = stop_last_trials
        self.s_max_1 = round(math.log(max_t) / math.log(reduction_factor)) + 1
        self.brackets: list[_HBBracket] = []
        self._s = self.s_max_1 - 1
        self._of: dict[str, _HBBracket] = {}
        self._go: set[str] = set()
        self._stopped: list[str] = []
        self._trials: dict[str, Trial] = {}

    @property
    def needs_metric(self) -> bool:
        return True

    def bracket_shape(self, s: int) -> tuple[int, float]:
        """(n0 trials, r0 first milestone) of bracket s, as Ray computes them."""
        n0 = math.ceil(self.s_max_1 / (s + 1) * self.eta ** s)
        return n0, int(self.max_t * self.eta ** (-s))

    def on_trial_add(self, trial: Trial) -> None:
        bracket = self.brackets[-1] if self.brackets else None
        if bracket is None or len(bracket.live) + len(bracket.gone) >= bracket.n0:
            n0, r0 = self.bracket_shape(self._s)
            bracket = _HBBracket(n0, max(r0, 1), self.eta, self.max_t)
            self.brackets.append(bracket)
            self._s = self._s - 1 if self._s > 0 else self.s_max_1 - 1
        bracket.live.append(trial.trial_id)
        self._of[trial.trial_id] = bracket
        self._trials[trial.trial_id] = trial

    def on_trial_result(self, trial: Trial, result: dict) -> str:
        bracket = self._of.get(trial.trial_id)
        if bracket is None:
            self.on_trial_add(trial)
            bracket = self._of[trial.trial_id]
        now = result.get(self.time_attr, 0)
        if self.stop_last_trials and now >= self.max_t:
            return STOP
        if now < bracket.milestone:
            return CONTINUE
        score = self._score(result)
        bracket.scores[trial.trial_id] = float("-inf") if score is None else score
        if not bracket.finished():
            return PAUSE
        return CONTINUE if trial.trial_id in self._halve(bracket, trial.trial_id) else STOP

    def _halve(self, bracket: _HBBracket, current: str | None = None) -> set[str]:
        """Successive halving at the milestone: the ids that go on; the rest end. The others
        (paused, or pausing) are resumed later or handed to the driver by take_stopped."""
        ranked = sorted(bracket.live, key=lambda tid: bracket.scores[tid], reverse=True)
        keep = set(ranked[:max(1, int(len(ranked) / self.eta))])
        for tid in ranked:
            if tid in keep:
                if tid != current:
                    self._go.add(tid)
            else:
                bracket.live.remove(tid)
                bracket.gone.add(tid)
                if tid != current:
                    self._stopped.append(tid)
        bracket.scores = {}
        bracket.milestone = min(bracket.milestone * self.eta, self.max_t)
        return keep

    def _leave(self, trial: Trial) -> None:
        bracket = self._of.get(trial.trial_id)
        if bracket is None or trial.trial_id not in bracket.live:
            return
        bracket.live.remove(trial.trial_id)
        bracket.gone.add(trial.trial_id)
        bracket.scores.pop(trial.trial_id, None)
        if bracket.live and bracket.finished():
            self._halve(bracket)

    def on_trial_complete(self, trial: Trial, result: dict | None) -> None:
        self._leave(trial)

    def on_trial_error(self, trial: Trial) -> None:
        self._leave(trial)

    def take_stopped(self) -> list[Trial]:
        stopped, self._stopped = self._stopped, []
        return [self._trials[tid] for tid in stopped if tid in self._trials]

    def on_search_finished(self) -> None:
        for bracket in self.brackets:
            bracket.closed = True
            if bracket.live and bracket.finished():
                self._halve(bracket)

    def choose_trial_to_run(self, trials: list[Trial]) -> Trial | None:
        """A pending trial first, else a paused one that was promoted."""
        for trial in trials:
            if trial.status == PENDING:
                return trial
        for trial in trials:
            if trial.status == PAUSED and trial.trial_id in self._go:
                self._go.discard(trial.trial_id)
                return trial
        return None


class MedianStoppingRule(TrialScheduler):
    """Stops a trial whose best result so far is worse than the median of the other trials'
    running means at the same time (Golovin et al. 2017, Google Vizier)."""

    def __init__(self, time_attr: str = "time_total_s", metric: str | None = None,
                 mode: str | None = None, grace_period: float = 60.0,
                 min_samples_required: int = 3, min_time_slice: float = 0,
                 hard_stop: bool = True):
        super().__init__(metric, mode)
        self.time_attr = time_attr
        self.grace_period = grace_period
        self.min_samples_required = min_samples_required
        self.min_time_slice = min_time_slice
        self.hard_stop = hard_stop
        self._results: dict[str, list[tuple[float, float]]] = {}
        self._last_pause: dict[str, float] = {}

    @property
    def needs_metric(self) -> bool:
        return True

    def on_trial_result(self, trial: Trial, result: dict) -> str:
        now = result.get(self.time_attr, 0)
        score = self._score(result)
        if score is not None:
            self._results.setdefault(trial.trial_id, []).append((now, score))
        if now < self.grace_period:
            return CONTINUE
        if now - self._last_pause.get(trial.trial_id, float("-inf")) < self.min_time_slice:
            return CONTINUE
        means = [self._running_mean(tid, now) for tid in self._results if tid != trial.trial_id]
        means = [m for m in means if m is not None]
        if len(means) < self.min_samples_required:
            return CONTINUE
        best = max((s for _, s in self._results.get(trial.trial_id, [])), default=None)
        if best is not None and best < statistics.median(means):
            self._last_pause[trial.trial_id] = now
            return STOP if self.hard_stop else PAUSE
        return CONTINUE

    def _running_mean(self, trial_id: str, now: float) -> float | None:
        scores = [s for t, s in self._results[trial_id] if t <= now]
        return sum(scores) / len(scores) if scores else None


class PopulationBasedTraining(TrialScheduler):
    """PBT (Jaderberg et al. 2017): every perturbation_interval, a trial in the bottom
    quantile_fraction clones the checkpoint and config of one in the top quantile (exploit),
    then perturbs that config (explore): hyperparam_mutations values are resampled with
    resample_probability, otherwise multiplied by a perturbation factor (numbers) or moved to a
    neighbouring value (lists)."""

    def __init__(self, time_attr: str = "time_total_s", metric: str | None = None,
                 mode: str | None = None, perturbation_interval: float = 60.0,
                 burn_in_period: float = 0.0, hyperparam_mutations: dict | None = None,
                 quantile_fraction: float = 0.25, resample_probability: float = 0.25,
                 perturbation_factors: tuple[float, float] = (1.2, 0.8),
                 custom_explore_fn: Callable[[dict], dict] | None = None,
                 seed: int | None = None):
        super().__init__(metric, mode)
        if not hyperparam_mutations and custom_explore_fn is None:
            raise ValueError("PopulationBasedTraining needs hyperparam_mutations or "
                             "custom_explore_fn")
        if not 0 <= quantile_fraction <= 0.5:
            raise ValueError(f"quantile_fraction must be in [0, 0.5], got {quantile_fraction}")
        self.time_attr = time_attr
        self.perturbation_interval = perturbation_interval
        self.burn_in_period = burn_in_period
        self.mutations = hyperparam_mutations or {}
        self.quantile_fraction = quantile_fraction
        self.resample_probability = resample_probability
        self.perturbation_factors = perturbation_factors
        self.custom_explore_fn = custom_explore_fn
        self._rng = random.Random(seed)
        self._trials: dict[str, Trial] = {}
        self._scores: dict[str, float] = {}
        self._last_perturbation: dict[str, float] = {}
        self.num_perturbations = 0

    @property
    def needs_metric(self) -> bool:
        return True

    def on_trial_add(self, trial: Trial) -> None:
        self._trials[trial.trial_id] = trial
        self._last_perturbation.setdefault(trial.trial_id, 0.0)

    def on_trial_result(self, trial: Trial, result: dict) -> str:
        self._trials.setdefault(trial.trial_id, trial)
        score = self._score(result)
        if score is not None:
            self._scores[trial.trial_id] = score
        now = result.get(self.time_attr, 0)
        if now < self.burn_in_period:
            return CONTINUE
        if now - self._last_perturbation.get(trial.trial_id, 0.0) < self.perturbation_interval:
            return CONTINUE
        self._last_perturbation[trial.trial_id] = now
        lower, upper = self.quantiles()
        if trial.trial_id not in [t.trial_id for t in lower]:
            return CONTINUE
        donors = [t for t in upper if t.checkpoint]
        if not donors:
            return CONTINUE
        donor = self._rng.choice(donors)
        trial.config = self.explore(donor.config)
        trial.extra["restore_from"] = donor.checkpoint
        trial.extra["exploited"] = donor.trial_id
        self.num_perturbations += 1
        return EXPLOIT

    def on_trial_complete(self, trial: Trial, result: dict | None) -> None:
        self._scores.pop(trial.trial_id, None)

    def on_trial_error(self, trial: Trial) -> None:
        self._scores.pop(trial.trial_id, None)

    def quantiles(self) -> tuple[list[Trial], list[Trial]]:
        """(bottom, top) trials by their latest score: ceil(n * quantile_fraction) each, at most
        half of the n live trials with a score."""
        ranked = sorted((tid for tid in self._scores if tid in self._trials),
                        key=lambda tid: self._scores[tid])
        if len(ranked) <= 1:
            return [], []
        num = math.ceil(len(ranked) * self.quantile_fraction)
        num = min(num, len(ranked) // 2)
        trials = [self._trials[tid] for tid in ranked]
        return trials[:num], trials[-num:] if num else []

    def explore(self, config: dict) -> dict:
        """A perturbed copy of config."""
        new = _explore(config, self.mutations, self.resample_probability,
                       self.perturbation_factors, self._rng)
        if self.custom_explore_fn is not None:
            new = self.custom_explore_fn(new)
        return new


def _explore(config: dict, mutations: dict, resample_p: float, factors: tuple,
             rng: random.Random) -> dict:
    new = copy.deepcopy(config)
    for key, spec in mutations.items():
        if isinstance(spec, dict):
            new[key] = _explore(config.get(key, {}), spec, resample_p, factors, rng)
        elif isinstance(spec, (list, tuple, Categorical)):
            values = list(spec.categories if isinstance(spec, Categorical) else spec)
            if rng.random() < resample_p or config.get(key) not in values:
                new[key] = values[rng.randrange(len(values))]
            else:
                i = values.index(config[key]) + rng.choice((-1, 1))
                new[key] = values[min(max(i, 0), len(values) - 1)]
        elif isinstance(spec, Domain) or callable(spec):
            if rng.random() < resample_p or key not in config:
                new[key] = spec.sample(rng) if isinstance(spec, Domain) else spec()
            else:
                value = config[key] * rng.choice(list(factors))
                new[key] = int(value) if isinstance(config[key], int) else value
        else:
            raise TypeError(f"hyperparam_mutations[{key!r}] must be a list, dict, tune domain "
                             f"or callable, got {spec!r}")
    return new
