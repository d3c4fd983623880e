"""OptunaSearch: Optuna's samplers (TPE by default) suggest the configs. Needs ``optuna``."""

from __future__ import annotations

from typing import Any

from .sample import Categorical, Domain, Float, Integer
from .searcher import FINISHED, Searcher, _assign, _name, _walk


def _distribution(path: tuple, domain: Domain):
    import optuna.distributions as od

    if isinstance(domain, Categorical):
        return od.CategoricalDistribution(domain.categories)
    if isinstance(domain, Float) and domain.kind in ("uniform", "loguniform"):
        log = domain.kind == "loguniform"  # any log base gives the same distribution
        return od.FloatDistribution(domain.lower, domain.upper, log=log,
                                    step=None if log else domain.q)
    if isinstance(domain, Integer):
        return od.IntDistribution(domain.lower, domain.upper - 1, log=domain.log,
                                  step=1 if domain.log else domain.q)
    raise ValueError(f"OptunaSearch cannot sample {domain!r} at {_name(path)}: use uniform, "
                     "quniform, loguniform, randint, qrandint, lograndint or choice")


class OptunaSearch(Searcher):
    """Ray's ``OptunaSearch``: each suggestion is an Optuna ``study.ask()``, each finished
    trial a ``study.tell()``. The space comes from the Tuner's param_space (tune domains)."""

    def __init__(self, space: dict | None = None, metric: str | None = None,
                 mode: str | None = None, points_to_evaluate: list[dict] | None = None,
                 sampler: Any = None, seed: int | None = None):
        super().__init__(metric, mode)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._sampler = sampler or optuna.samplers.TPESampler(seed=seed)
        self._points = list(points_to_evaluate or [])
        self._space = space
        self._study = None
        self._paths: dict[str, tuple] = {}
        self._dists: dict[str, Any] = {}
        self._fixed: dict = {}
        self._ot: dict[str, Any] = {}
        self._limit: int | None = None
        self._made = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        super().set_search_properties(metric, mode, config)
        if not self.metric or self.mode not in ("min", "max"):
            raise ValueError("OptunaSearch needs metric and mode (in TuneConfig or here)")
        self._setup(self._space if self._space is not None else config)
        self._limit = spec.get("num_samples")
        return True

    def _setup(self, space: dict) -> None:
        import copy

        import optuna

        self._fixed = copy.deepcopy(space)
        for path, leaf in _walk(space):
            if isinstance(leaf, dict):  # a grid_search
                raise ValueError(  # noqa: TRY004 - a bad space, like the other space errors
                    f"OptunaSearch does not take grid_search (at {_name(path)}); use choice()")
            name = _name(path)
            self._paths[name] = path
            self._dists[name] = _distribution(path, leaf)
        direction = "maximize" if self.mode == "max" else "minimize"
        self._study = optuna.create_study(sampler=self._sampler, direction=direction)
        for point in self._points:
            self._study.enqueue_trial({_name(p): _get(point, p) for p in self._paths.values()
                                       if _has(point, p)})

    def suggest(self, trial_id: str):
        if self._study is None:
            raise RuntimeError("OptunaSearch has no search space yet")
        if self._limit is not None and self._made >= self._limit:
            return FINISHED
        import copy

        ot = self._study.ask(self._dists)
        self._ot[trial_id] = ot
        self._made += 1
        config = copy.deepcopy(self._fixed)
        for name, path in self._paths.items():
            _assign(config, path, ot.params[name])
        return config

    def on_trial_complete(self, trial_id, result=None, error=False) -> None:
        import optuna

        ot = self._ot.pop(trial_id, None)
        if ot is None:
            return
        value = (result or {}).get(self.metric)
        if error or value is None:
            self._study.tell(ot, state=optuna.trial.TrialState.FAIL)
        else:
            self._study.tell(ot, float(value))

    @property
    def study(self):
        """The Optuna study (best_params, trials_dataframe(), ...)."""
        return self._study


def _get(config: Any, path: tuple) -> Any:
    for key in path:
        config = config[key]
    return config


def _has(config: Any, path: tuple) -> bool:
    try:
        _get(config, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True
