"""Aggregations (Ray Data's AggregateFn, Count, Sum, Min, Max, Mean, Std): per group and global."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from .block import Block, group_bounds, num_rows


class AggregateFn:
    """An aggregation: ``init(key) -> acc``, ``accumulate_block(acc, block) -> acc`` (or
    ``accumulate_row(acc, row)``), ``merge(acc, acc) -> acc``, ``finalize(acc) -> value``."""

    def __init__(self, init: Callable[[Any], Any], merge: Callable[[Any, Any], Any],
                 accumulate_row: Callable[[Any, dict], Any] | None = None,
                 accumulate_block: Callable[[Any, Block], Any] | None = None,
                 finalize: Callable[[Any], Any] | None = None, name: str | None = None):
        if (accumulate_row is None) == (accumulate_block is None):
            raise ValueError("give exactly one of accumulate_row and accumulate_block")
        self.init = init
        self.merge = merge
        self.accumulate_row = accumulate_row
        self.accumulate_block = accumulate_block
        self.finalize = finalize or (lambda a: a)
        self.name = name or "aggregate"

    def accumulate(self, acc: Any, block: Block) -> Any:
        if self.accumulate_block is not None:
            return self.accumulate_block(acc, block)
        keys = list(block)
        for i in range(num_rows(block)):
            acc = self.accumulate_row(acc, {k: block[k][i] for k in keys})
        return acc

    def per_group(self, block: Block, starts: np.ndarray, keys: list) -> np.ndarray:
        """The finalized value of each group of a block sorted by key (runs start at starts)."""
        out = []
        for gi in range(len(starts) - 1):
            a, b = starts[gi], starts[gi + 1]
            sub = {k: v[a:b] for k, v in block.items()}
            acc = self.accumulate(self.init(keys[gi] if keys else None), sub)
            out.append(self.finalize(acc))
        return _as_column(out)


def _as_column(values: list) -> np.ndarray:
    try:
        arr = np.asarray(values)
        if arr.dtype != object and arr.ndim >= 1:
            return arr
    except ValueError:
        pass
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class _Vector(AggregateFn):
    """A built-in: vectorized over groups with reduceat; (n, sum, sum of squares, min, max)
    partials for global aggregation."""

    kind = ""

    def __init__(self, on: str | None = None, ignore_nulls: bool = True,
                 alias_name: str | None = None):
        self.on = on
        self.ignore_nulls = ignore_nulls
        name = alias_name or f"{self.kind}({on or ''})"
        super().__init__(init=lambda k: None, merge=_merge_partial,
                         accumulate_block=self._partial, finalize=self._final, name=name)

    def _values(self, block: Block) -> np.ndarray:
        if self.on is None:
            return np.zeros(num_rows(block))
        if self.on not in block:
            raise KeyError(f"no column {self.on!r} to aggregate; the columns are {list(block)}")
        col = block[self.on]
        if self.ignore_nulls and col.dtype.kind == "f":
            col = col[~np.isnan(col)]
        return col

    def _partial(self, acc: Any, block: Block) -> tuple:
        v = self._values(block)
        if len(v) == 0:
            part = (0, 0.0, 0.0, None, None)
        else:
            mean = v.mean() if v.dtype.kind in "fiub" else 0.0
            m2 = float(((v - mean) ** 2).sum()) if v.dtype.kind in "fiub" else 0.0
            part = (len(v), v.sum() if v.dtype.kind in "fiub" else 0, m2, v.min(), v.max())
        return part if acc is None else _merge_partial(acc, part)

    def _final(self, acc: Any) -> Any:
        n, s, m2, lo, hi = acc if acc is not None else (0, 0, 0.0, None, None)
        return self.from_partial(n, s, m2, lo, hi)

    def from_partial(self, n, s, m2, lo, hi):  # pragma: no cover - overridden
        raise NotImplementedError

    def per_group(self, block: Block, starts: np.ndarray, keys: list) -> np.ndarray:
        if self.on is not None and self.ignore_nulls and block[self.on].dtype.kind == "f" \
                and np.isnan(block[self.on]).any():
            return super().per_group(block, starts, keys)
        return self.vector(block[self.on] if self.on else None, starts)

    def vector(self, col, starts):  # pragma: no cover - overridden
        raise NotImplementedError


def _merge_partial(a: tuple, b: tuple) -> tuple:
    na, sa, m2a, loa, hia = a
    nb, sb, m2b, lob, hib = b
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    delta = sb / nb - sa / na
    m2 = m2a + m2b + delta * delta * na * nb / n
    return (n, sa + sb, m2, min(loa, lob), max(hia, hib))


class Count(_Vector):
    kind = "count"

    def from_partial(self, n, s, m2, lo, hi):
        return n

    def vector(self, col, starts):
        return np.diff(starts)


class Sum(_Vector):
    kind = "sum"

    def from_partial(self, n, s, m2, lo, hi):
        return s if n else None

    def vector(self, col, starts):
        return np.add.reduceat(col, starts[:-1])


class Min(_Vector):
    kind = "min"

    def from_partial(self, n, s, m2, lo, hi):
        return lo

    def vector(self, col, starts):
        if col.dtype == object:
            return _as_column([min(col[a:b]) for a, b in itertools.pairwise(starts)])
        return np.minimum.reduceat(col, starts[:-1])


class Max(_Vector):
    kind = "max"

    def from_partial(self, n, s, m2, lo, hi):
        return hi

    def vector(self, col, starts):
        if col.dtype == object:
            return _as_column([max(col[a:b]) for a, b in itertools.pairwise(starts)])
        return np.maximum.reduceat(col, starts[:-1])


class Mean(_Vector):
    kind = "mean"

    def from_partial(self, n, s, m2, lo, hi):
        return s / n if n else None

    def vector(self, col, starts):
        return np.add.reduceat(col.astype(np.float64), starts[:-1]) / np.diff(starts)


class Std(_Vector):
    kind = "std"

    def __init__(self, on: str | None = None, ddof: int = 1, ignore_nulls: bool = True,
                 alias_name: str | None = None):
        self.ddof = ddof
        super().__init__(on, ignore_nulls, alias_name)

    def from_partial(self, n, s, m2, lo, hi):
        return float(np.sqrt(m2 / (n - self.ddof))) if n - self.ddof > 0 else None

    def vector(self, col, starts):
        col = col.astype(np.float64)
        counts = np.diff(starts)
        means = np.add.reduceat(col, starts[:-1]) / counts
        dev = col - np.repeat(means, counts)
        m2 = np.add.reduceat(dev * dev, starts[:-1])
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.sqrt(m2 / (counts - self.ddof))
        return np.where(counts - self.ddof > 0, out, np.nan)


def aggregate_groups(block: Block, keys: list[str], aggs: list[AggregateFn]) -> Block:
    """One row per group of a block already sorted by keys: the keys, then each aggregation."""
    starts = group_bounds(block, keys)
    if num_rows(block) == 0:
        return {}
    out = {k: block[k][starts[:-1]] for k in keys}
    key_values = [tuple(block[k][i] for k in keys) if len(keys) > 1 else block[keys[0]][i]
                  for i in starts[:-1]] if any(not isinstance(a, _Vector) for a in aggs) else []
    for agg in aggs:
        out[agg.name] = agg.per_group(block, starts, key_values)
    return out
