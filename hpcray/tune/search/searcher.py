"""The searcher interface, the default variant generator (random + grid) and ConcurrencyLimiter."""

from __future__ import annotations

import copy
import itertools
import random
from typing import Any

from .sample import Domain, Function

FINISHED = "FINISHED"

Path = tuple


class Searcher:
    """Suggests configs one trial at a time and learns from their results (Ray's interface)."""

    FINISHED = FINISHED

    def __init__(self, metric: str | None = None, mode: str | None = None):
        self.metric = metric
        self.mode = mode

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec) -> bool:
        """Called by the Tuner with its metric, mode and param_space; False if already set."""
        if self.metric is None:
            self.metric = metric
        if self.mode is None:
            self.mode = mode
        return True

    def suggest(self, trial_id: str) -> dict | None | str:
        """A config, None (nothing now: ask again later) or FINISHED."""
        raise NotImplementedError

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass


class _Spec:
    """What sample_from functions receive: ``spec.config`` (attribute or key access)."""

    def __init__(self, config: dict):
        self.config = _AttrDict(config)


class _AttrDict(dict):
    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return _AttrDict(value) if isinstance(value, dict) else value


def _walk(space: Any, path: Path = ()):
    """Yields (path, leaf) for every grid_search dict and Domain in a nested dict/list space."""
    if isinstance(space, dict):
        if "grid_search" in space:
            values = space["grid_search"]
            if len(space) != 1 or not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"bad search space at {_name(path)}: grid_search needs a "
                                 f"non-empty list, as made by tune.grid_search([...])")
            yield path, space
            return
        for key, value in space.items():
            yield from _walk(value, (*path, key))
    elif isinstance(space, (list, tuple)):
        for i, value in enumerate(space):
            yield from _walk(value, (*path, i))
    elif isinstance(space, Domain):
        yield path, space
    elif isinstance(space, type) and issubclass(space, Domain):
        raise TypeError(f"bad search space at {_name(path)}: {space.__name__} is a class; "
                         f"use tune.uniform(...), tune.choice([...]) and friends")


def _name(path: Path) -> str:
    return "/".join(str(p) for p in path) or "<root>"


def _assign(config: Any, path: Path, value: Any) -> None:
    for key in path[:-1]:
        config = config[key]
    if isinstance(config, tuple):
        raise TypeError(f"bad search space at {_name(path)}: use lists, not tuples, around "
                         "sampled values")
    config[path[-1]] = value


def count_variants(space: dict) -> int:
    """How many configs one sample of the space makes (the product of its grid sizes)."""
    n = 1
    for _, leaf in _walk(space):
        if isinstance(leaf, dict):
            n *= len(leaf["grid_search"])
    return n


def generate_variants(space: dict, rng: random.Random) -> list[dict]:
    """One resolved config per grid combination; random domains sampled for each."""
    leaves = list(_walk(space))
    grids = [(p, leaf["grid_search"]) for p, leaf in leaves if isinstance(leaf, dict)]
    plain = [(p, leaf) for p, leaf in leaves if isinstance(leaf, Domain)
             and not isinstance(leaf, Function)]
    funcs = [(p, leaf) for p, leaf in leaves if isinstance(leaf, Function)]
    variants = []
    # Ray's order: the first grid parameter changes fastest
    for combo in itertools.product(*[values for _, values in reversed(grids)]):
        config = copy.deepcopy(space)
        for (path, _), value in zip(reversed(grids), combo):
            _assign(config, path, value)
        for path, domain in plain:
            _assign(config, path, domain.sample(rng))
        for path, domain in funcs:
            try:
                value = domain.sample(rng, _Spec(config))
            except Exception as exc:
                raise ValueError(f"bad search space at {_name(path)}: sample_from raised "
                                 f"{type(exc).__name__}: {exc}") from exc
            _assign(config, path, value)
        variants.append(config)
    return variants


class BasicVariantGenerator(Searcher):
    """Random and grid search: num_samples times every grid combination, seeded by random_state.

    ``points_to_evaluate`` (partial configs) are tried first, the rest of each filled in from
    the space.
    """

    def __init__(self, points_to_evaluate: list[dict] | None = None, max_concurrent: int = 0,
                 random_state: int | None = None, constant_grid_search: bool = False):
        super().__init__()
        self._points = [copy.deepcopy(p) for p in points_to_evaluate or []]
        self.max_concurrent = max_concurrent
        self._rng = random.Random(random_state)
        self._space: dict = {}
        self._num_samples = 1
        self._queue: list[dict] = []
        self._samples_done = 0
        self._running: set[str] = set()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        super().set_search_properties(metric, mode, config)
        self._space = config or {}
        self._num_samples = int(spec.get("num_samples", 1))
        list(_walk(self._space))  # validates the space now, before any trial starts
        return True

    @property
    def total_samples(self) -> float:
        """How many configs this generator makes in all (num_samples=-1: without end)."""
        if self._num_samples < 0:
            return float("inf")
        return len(self._points) + self._num_samples * count_variants(self._space)

    def suggest(self, trial_id: str):
        if self.max_concurrent and len(self._running) >= self.max_concurrent:
            return None
        if not self._queue:
            if self._points:
                point = self._points.pop(0)
                self._queue = generate_variants(_merge(self._space, point), self._rng)[:1]
            elif self._num_samples < 0 or self._samples_done < self._num_samples:  # -1: no end
                self._samples_done += 1
                self._queue = generate_variants(self._space, self._rng)
            else:
                return FINISHED
        self._running.add(trial_id)
        return self._queue.pop(0)

    def on_trial_complete(self, trial_id, result=None, error=False) -> None:
        self._running.discard(trial_id)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) \
                and "grid_search" not in out[key]:
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class ConcurrencyLimiter(Searcher):
    """Wraps a searcher so at most max_concurrent of its trials run at once."""

    def __init__(self, searcher: Searcher, max_concurrent: int, batch: bool = False):
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        super().__init__(searcher.metric, searcher.mode)
        self.searcher = searcher
        self.max_concurrent = max_concurrent
        self.batch = batch
        self._live: set[str] = set()
        self._batch_open = True

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self.metric, self.mode = self.searcher.metric, self.searcher.mode
        return ok

    @property
    def total_samples(self) -> int | None:
        return getattr(self.searcher, "total_samples", None)

    def suggest(self, trial_id: str):
        if len(self._live) >= self.max_concurrent:
            return None
        if self.batch and not self._batch_open:
            if self._live:
                return None
            self._batch_open = True
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self._live.add(trial_id)
            if self.batch and len(self._live) >= self.max_concurrent:
                self._batch_open = False
        return config

    def on_trial_result(self, trial_id, result) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False) -> None:
        if trial_id in self._live:
            self._live.discard(trial_id)
            self.searcher.on_trial_complete(trial_id, result, error)
