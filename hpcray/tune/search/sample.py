"""Search space primitives (Ray Tune's names): domains sampled per trial, and grid_search."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any


class Domain:
    """A distribution one hyperparameter is drawn from."""

    def sample(self, rng: random.Random, spec: Any = None) -> Any:
        raise NotImplementedError


class Categorical(Domain):
    def __init__(self, categories: Sequence[Any]):
        categories = list(categories)
        if not categories:
            raise ValueError("choice() needs at least one category")
        self.categories = categories

    def sample(self, rng, spec=None):
        return self.categories[rng.randrange(len(self.categories))]

    def __repr__(self) -> str:
        return f"choice({self.categories!r})"


class Float(Domain):
    """uniform, quniform, loguniform, qloguniform, randn and qrandn."""

    def __init__(self, kind: str, a: float, b: float, q: float | None = None, base: float = 10):
        if kind in ("uniform", "loguniform") and not a < b:
            raise ValueError(f"{kind}({a}, {b}): lower bound must be below upper bound")
        if kind == "loguniform" and a <= 0:
            raise ValueError(f"loguniform({a}, {b}): bounds must be positive")
        if kind == "randn" and b <= 0:
            raise ValueError(f"randn({a}, {b}): sd must be positive")
        if q is not None and q <= 0:
            raise ValueError(f"q must be positive, got {q}")
        self.kind, self.lower, self.upper, self.q, self.base = kind, a, b, q, base

    def sample(self, rng, spec=None):
        if self.kind == "uniform":
            value = rng.uniform(self.lower, self.upper)
        elif self.kind == "loguniform":
            lo, hi = math.log(self.lower, self.base), math.log(self.upper, self.base)
            value = self.base ** rng.uniform(lo, hi)
        else:
            value = rng.gauss(self.lower, self.upper)
        if self.q is not None:
            value = round(value / self.q) * self.q
            if self.kind != "randn":
                value = min(max(value, self.lower), self.upper)
        return float(value)

    def __repr__(self) -> str:
        q = f", q={self.q}" if self.q is not None else ""
        return f"{self.kind}({self.lower}, {self.upper}{q})"


class Integer(Domain):
    """randint, qrandint and lograndint: integers in [lower, upper)."""

    def __init__(self, lower: int, upper: int, q: int = 1, log: bool = False, base: float = 10):
        if not lower < upper:
            raise ValueError(f"randint({lower}, {upper}): lower bound must be below upper bound")
        if log and lower <= 0:
            raise ValueError(f"lograndint({lower}, {upper}): bounds must be positive")
        self.lower, self.upper, self.q, self.log, self.base = lower, upper, q, log, base

    def sample(self, rng, spec=None):
        if self.log:
            lo, hi = math.log(self.lower, self.base), math.log(self.upper, self.base)
            value = int(self.base ** rng.uniform(lo, hi))
        else:
            value = rng.randrange(self.lower, self.upper)
        if self.q != 1:
            value = int(round(value / self.q) * self.q)
        return min(max(value, self.lower), self.upper - 1) if self.q == 1 else value

    def __repr__(self) -> str:
        return f"randint({self.lower}, {self.upper})"


class Function(Domain):
    """sample_from(fn): fn(spec) with spec.config the trial's other resolved parameters."""

    def __init__(self, fn: Callable[[Any], Any]):
        if not callable(fn):
            raise TypeError(f"sample_from() needs a callable, got {fn!r}")
        self.fn = fn

    def sample(self, rng, spec=None):
        return self.fn(spec)

    def __repr__(self) -> str:
        return f"sample_from({getattr(self.fn, '__name__', self.fn)!r})"


def choice(categories: Sequence[Any]) -> Categorical:
    """One of categories, uniformly."""
    return Categorical(categories)


def uniform(lower: float, upper: float) -> Float:
    return Float("uniform", lower, upper)


def quniform(lower: float, upper: float, q: float) -> Float:
    """uniform, rounded to a multiple of q."""
    return Float("uniform", lower, upper, q)


def loguniform(lower: float, upper: float, base: float = 10) -> Float:
    """Uniform in log space (e.g. learning rates)."""
    return Float("loguniform", lower, upper, base=base)


def qloguniform(lower: float, upper: float, q: float, base: float = 10) -> Float:
    return Float("loguniform", lower, upper, q, base)


def randn(mean: float = 0.0, sd: float = 1.0) -> Float:
    return Float("randn", mean, sd)


def qrandn(mean: float, sd: float, q: float) -> Float:
    return Float("randn", mean, sd, q)


def randint(lower: int, upper: int) -> Integer:
    """An integer in [lower, upper) (upper excluded, as in Ray)."""
    return Integer(lower, upper)


def qrandint(lower: int, upper: int, q: int = 1) -> Integer:
    return Integer(lower, upper, q)


def lograndint(lower: int, upper: int, base: float = 10) -> Integer:
    return Integer(lower, upper, log=True, base=base)


def sample_from(func: Callable[[Any], Any]) -> Function:
    """A value computed per trial by func(spec); spec.config holds the other parameters."""
    return Function(func)


def grid_search(values: Sequence[Any]) -> dict[str, list]:
    """Every value is tried (times num_samples); grids in one space multiply."""
    values = list(values)
    if not values:
        raise ValueError("grid_search() needs at least one value")
    return {"grid_search": values}
