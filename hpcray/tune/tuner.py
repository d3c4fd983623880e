"""Tuner: Ray Tune's entry point. fit() runs the sweep; restore() continues a killed one."""

from __future__ import annotations

import copy
import datetime
import functools
import os
from typing import Any

import hpcray

from . import controller as ctl
from . import registry
from . import schedulers as sched
from .config import RunConfig, TuneConfig
from .controller import TuneController
from .result import ResultGrid, TuneError, to_result
from .search import BasicVariantGenerator, ConcurrencyLimiter, Searcher
from .search.searcher import count_variants
from .session import Trainable
from .storage import SEARCH_FILE, TRIAL_STATE, TUNER_FILE, ExperimentStorage, default_storage_path
from .trainer import as_trainable, is_trainer
from .trial import ERROR, PAUSED, PENDING, RUNNING, TERMINATED


def _name_of(trainable: Any) -> str:
    inner = getattr(trainable, "_tune_inner", trainable)
    return getattr(inner, "__name__", type(inner).__name__)


class Tuner:
    """Tuner(trainable, param_space=..., tune_config=TuneConfig(...), run_config=RunConfig(...)).

    trainable: a function ``fn(config)`` calling ``tune.report(...)``, a Trainable subclass,
    an hpcray.train trainer (param_space={"train_loop_config": {...}}), or the name of one
    registered with ``tune.register_trainable`` or of an RLlib algorithm ("PPO", "DQN", ...).
    """

    def __init__(self, trainable: Any, *, param_space: dict | None = None,
                 tune_config: TuneConfig | None = None, run_config: RunConfig | None = None,
                 _restored: dict | None = None):
        if isinstance(trainable, str):
            trainable = registry.get_trainable_cls(trainable)
        trainable = _sized(trainable, param_space)
        if is_trainer(trainable):
            trainable = as_trainable(trainable, dict(param_space or {}))
        if not callable(trainable):
            raise TypeError(f"trainable must be a function or a Trainable class, got "
                            f"{type(trainable).__name__}")
        self.trainable = trainable
        self.param_space = dict(param_space or {})
        self.tune_config = tune_config or TuneConfig()
        self.run_config = run_config or RunConfig()
        self._restored = _restored
        self._results: ResultGrid | None = None
        if _restored is None:
            try:
                count_variants(self.param_space)  # a bad space fails here, before anything runs
            except (TypeError, ValueError) as exc:
                raise TuneError(f"bad search space: {exc}") from exc

    def fit(self) -> ResultGrid:
        """Runs every trial; returns their results (trial errors are in ``.errors``)."""
        tc, rc = self.tune_config, self.run_config
        name = rc.name or f"{_name_of(self.trainable)}_" \
            f"{datetime.datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"
        storage = ExperimentStorage(os.path.join(rc.storage_path or default_storage_path(), name))
        if self._restored is not None:
            searcher, scheduler, trials = (self._restored["searcher"],
                                           self._restored["scheduler"], self._restored["trials"])
        else:
            searcher, scheduler, trials = self._make_search(), self._make_scheduler(), []
            storage.write_pickle(SEARCH_FILE, {"searcher": searcher, "tag": None,
                                               "num_suggested": 0})
            storage.write_pickle(TUNER_FILE, {
                "param_space": self.param_space, "tune_config": tc, "run_config": rc,
                "name": name, "scheduler": scheduler})
        if not hpcray.is_initialized():
            hpcray.init()
        _watch_preemption()
        controller = TuneController(self.trainable, searcher, scheduler, storage, tc, rc, trials,
                                    prefix=_name_of(self.trainable), restored=self._restored)
        done = controller.run()
        self._results = ResultGrid([to_result(t) for t in done], storage.path,
                                   tc.metric, tc.mode)
        return self._results

    def get_results(self) -> ResultGrid:
        """fit()'s results; for a restored Tuner not yet fit, the results saved so far."""
        if self._results is None and self._restored is not None:
            tc = self.tune_config
            path = os.path.join(self.run_config.storage_path, self.run_config.name)
            return ResultGrid([to_result(t) for t in self._restored["trials"]], path,
                              tc.metric, tc.mode)
        if self._results is None:
            raise RuntimeError("fit() has not run yet")
        return self._results

    def _make_search(self) -> Searcher:
        tc = self.tune_config
        searcher = tc.search_alg if tc.search_alg is not None else BasicVariantGenerator()
        if tc.max_concurrent_trials and not isinstance(searcher, BasicVariantGenerator) \
                and not isinstance(searcher, ConcurrencyLimiter):
            searcher = ConcurrencyLimiter(searcher, tc.max_concurrent_trials)
        spec = {"num_samples": tc.num_samples}
        try:
            searcher.set_search_properties(tc.metric, tc.mode, self.param_space, **spec)
        except (TypeError, ValueError) as exc:
            raise TuneError(f"bad search space: {exc}") from exc
        return searcher

    def _make_scheduler(self) -> sched.TrialScheduler:
        tc = self.tune_config
        scheduler = tc.scheduler if tc.scheduler is not None else sched.FIFOScheduler()
        scheduler.set_search_properties(tc.metric, tc.mode)
        if scheduler.needs_metric and not (scheduler.metric and scheduler.mode):
            raise TuneError(f"{type(scheduler).__name__} needs a metric and a mode: set them in "
                            "TuneConfig or in the scheduler")
        return scheduler

    @classmethod
    def can_restore(cls, path: str) -> bool:
        """Whether path holds an experiment that Tuner.restore can continue."""
        return os.path.exists(os.path.join(path, TUNER_FILE)) and \
            os.path.exists(os.path.join(path, SEARCH_FILE))

    @classmethod
    def restore(cls, path: str, trainable: Any, *, resume_unfinished: bool = True,
                resume_errored: bool = False, restart_errored: bool = False,
                param_space: dict | None = None) -> Tuner:
        """The experiment at path, ready to fit() again: finished trials are kept, unfinished
        ones continue from their last checkpoint, the searcher goes on where it stopped."""
        path = os.path.abspath(path)
        if not cls.can_restore(path):
            raise ValueError(f"no restorable experiment at {path} (no {TUNER_FILE} and "
                             f"{SEARCH_FILE})")
        storage = ExperimentStorage(path)
        saved = storage.read_pickle(TUNER_FILE)
        search = storage.read_pickle(SEARCH_FILE)
        trials = storage.load_trials()
        searcher = search["searcher"]
        # the scheduler as last saved, rungs, brackets and all; a run that saved none (it was
        # killed within its first second) starts from the one Tuner() made
        scheduler = search.get("scheduler")
        known = search.get("num_suggested", 0) if scheduler is not None else 0
        scheduler = scheduler if scheduler is not None else saved["scheduler"]
        for trial in trials[search.get("num_suggested", 0):]:
            searcher.suggest(trial.trial_id)  # made after the last snapshot: replay, discard
        for trial in trials:
            if trial.status == PAUSED and known and resume_unfinished:
                pass  # the saved scheduler decides when it goes on (HyperBand)
            elif trial.status in (RUNNING, PAUSED, PENDING):
                trial.status = PENDING if resume_unfinished else TERMINATED
            elif trial.status == ERROR and (resume_errored or restart_errored):
                trial.status = PENDING
                trial.num_failures = 0
                os.remove(os.path.join(trial.local_path, TRIAL_STATE))
                if restart_errored:
                    trial.checkpoint, trial.checkpoints, trial.iteration = None, [], 0
            if trial.is_finished:
                searcher.on_trial_complete(trial.trial_id, trial.last_result,
                                           error=trial.status == ERROR)
        rc = copy.copy(saved["run_config"])
        rc.name = os.path.basename(path)
        rc.storage_path = os.path.dirname(path)
        tuner = cls(trainable, param_space=param_space or saved["param_space"],
                    tune_config=saved["tune_config"], run_config=rc, _restored={
                        "searcher": searcher, "scheduler": scheduler, "trials": trials,
                        "tag": search["tag"], "known": known,
                        "finished": search.get("finished", ())})
        return tuner


_preemption_watched: list[bool] = []


def _watch_preemption() -> None:
    """Registers, once, the hpcray.on_preempt callback that saves every running sweep."""
    if not _preemption_watched:
        _preemption_watched.append(True)
        hpcray.on_preempt(ctl.on_preempt)


def _sized(trainable: Any, param_space: dict | None) -> Any:
    """A Trainable class with ``default_resource_request(config)`` (an RLlib algorithm: its env
    runners and learners are actors of their own) sized by it: Ray's bundle list, the first
    bundle held by the trial's actor. Without this, trials filling every CPU would leave
    none for their runners."""
    request = getattr(trainable, "default_resource_request", None)
    if request is None or getattr(trainable, "_tune_resources", None) is not None:
        return trainable
    bundles = request(param_space or {})
    if not bundles:
        return trainable

    def total(key: str, items: list) -> float:
        return float(sum(b.get(key, 0) for b in items))

    return type(trainable.__name__, (trainable,), {
        "_tune_resources": {"cpu": total("CPU", bundles), "gpu": total("GPU", bundles)},
        "_tune_runner_resources": {"cpu": total("CPU", bundles[:1]),
                                   "gpu": total("GPU", bundles[:1])},
        "_tune_inner": getattr(trainable, "_tune_inner", trainable)})


def with_parameters(trainable: Any, **kwargs: Any) -> Any:
    """The trainable with extra keyword arguments, each put in the object store once and
    shared by all trials (large datasets): ``fn(config, data=...)``, or Trainable.setup's."""
    refs = {key: hpcray.put(value) for key, value in kwargs.items()}
    if isinstance(trainable, type) and issubclass(trainable, Trainable):
        class _WithParameters(trainable):
            def setup(self, config):
                return trainable.setup(self, config, **{
                    k: hpcray.get(r) for k, r in refs.items()})

        _WithParameters.__name__ = trainable.__name__
        _WithParameters._tune_inner = trainable
        _WithParameters._tune_resources = getattr(trainable, "_tune_resources", None)
        return _WithParameters

    @functools.wraps(trainable)
    def inner(config):
        return trainable(config, **{k: hpcray.get(r) for k, r in refs.items()})

    inner._tune_inner = trainable
    inner._tune_resources = getattr(trainable, "_tune_resources", None)
    return inner


def with_resources(trainable: Any, resources: dict[str, float]) -> Any:
    """The trainable, run with these resources per trial: {"cpu": 2, "gpu": 1}."""
    res = {k.lower(): float(v) for k, v in dict(resources).items()}
    unknown = set(res) - {"cpu", "gpu"}
    if unknown:
        raise ValueError(f"with_resources takes 'cpu' and 'gpu', got {sorted(unknown)}")
    if isinstance(trainable, type):
        wrapped = type(trainable.__name__, (trainable,), {"_tune_resources": res})
        return wrapped

    @functools.wraps(trainable)
    def inner(config, **kwargs):
        return trainable(config, **kwargs)

    inner._tune_inner = getattr(trainable, "_tune_inner", trainable)
    inner._tune_resources = res
    return inner


__all__ = ["Tuner", "with_parameters", "with_resources"]
