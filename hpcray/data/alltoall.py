"""All-to-all operators (shuffle, sort, groupby, repartition, zip): map tasks cut every block
into parts, reduce tasks combine part i of every block. Parts move rank to rank as objects."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import hpcray

from .aggregate import AggregateFn, aggregate_groups
from .block import (
    Block,
    concat,
    from_batch,
    group_bounds,
    num_rows,
    quantile_bounds,
    range_partition,
    slice_block,
    sort_block,
    take_rows,
    to_batch,
)
from .executor import Bundle, _meta, job_cpus, remote


def row_pieces(rows: list[int], cuts: list[int]) -> list[list[tuple[int, int, int]]]:
    """For output ranges [cuts[k], cuts[k+1]) of the concatenated inputs (of these row counts),
    the (input index, start, stop) pieces that make each output."""
    starts = np.concatenate([[0], np.cumsum(rows)]).astype(int)
    out = []
    for a, b in itertools.pairwise(cuts):
        pieces = []
        for i, n in enumerate(rows):
            lo, hi = max(a, starts[i]), min(b, starts[i] + n)
            if hi > lo:
                pieces.append((i, int(lo - starts[i]), int(hi - starts[i])))
        out.append(pieces)
    return out


def _gather(ranges: list[tuple[int, int]], *blocks: Block) -> tuple[Block, dict]:
    t0 = time.perf_counter()
    out = concat([slice_block(b, a, z) for b, (a, z) in zip(blocks, ranges)])
    return out, _meta(out, t0, "gather")


def gather(bundles: list[Bundle], cuts: list[int]) -> list[Bundle]:
    """New blocks holding rows [cuts[k], cuts[k+1]) of the bundles' rows, in order."""
    rows = [m["rows"] for _, m in bundles]
    outs = []
    for pieces in row_pieces(rows, cuts):
        if not pieces:
            outs.append(_empty_like(bundles))
            continue
        if len(pieces) == 1:
            i, a, z = pieces[0]
            if a == 0 and z == rows[i]:
                outs.append(bundles[i])
                continue
        refs = [bundles[i][0] for i, _, _ in pieces]
        ranges = [(a, z) for _, a, z in pieces]
        outs.append(remote(_gather, num_returns=2).remote(ranges, *refs))
    return _resolve(outs)


def _empty_like(bundles: list[Bundle]) -> Any:
    if not bundles:
        return remote(_gather, num_returns=2).remote([])
    return remote(_gather, num_returns=2).remote([(0, 0)], bundles[0][0])


def _resolve(outs: list) -> list[Bundle]:
    """Pairs of (block ref, meta ref) or ready bundles -> bundles (metadata fetched at once)."""
    pending = [o for o in outs if not isinstance(o[1], dict)]
    metas = iter(hpcray.get([o[1] for o in pending]))
    return [o if isinstance(o[1], dict) else (o[0], next(metas)) for o in outs]


def even_cuts(total: int, n: int) -> list[int]:
    return [total * k // n for k in range(n + 1)]


def repartition(bundles: list[Bundle], n: int) -> list[Bundle]:
    total = sum(m["rows"] for _, m in bundles)
    return gather(bundles, even_cuts(total, n))


# ------------------------------------------------------------------------------- shuffle

def _shuffle_map(block: Block, parts: int, seed: Any) -> Any:
    rng = np.random.default_rng(seed)
    n = num_rows(block)
    dest = rng.integers(parts, size=n)
    order = np.argsort(dest, kind="stable")
    counts = np.bincount(dest, minlength=parts)
    edges = np.concatenate([[0], np.cumsum(counts)])
    out = [take_rows(block, order[edges[i]:edges[i + 1]]) for i in range(parts)]
    return out[0] if parts == 1 else tuple(out)


def _shuffle_reduce(seed: Any, *parts: Block) -> tuple[Block, dict]:
    t0 = time.perf_counter()
    block = concat(parts)
    block = take_rows(block, np.random.default_rng(seed).permutation(num_rows(block)))
    return block, _meta(block, t0, "shuffle reduce")


def _reduce_all(map_outs: list, parts: int, reducer: Callable, args: Callable[[int], tuple]
                ) -> list[Bundle]:
    outs = []
    for j in range(parts):
        refs = [m if parts == 1 else m[j] for m in map_outs]
        outs.append(remote(reducer, num_returns=2).remote(*args(j), *refs))
    return _resolve(outs)


def shuffle_parts(bundles: list[Bundle], target: int = 32 * 2**20) -> int:
    """Reduce tasks of an all-to-all: one per input block, but no more than make ~32 MiB
    outputs (at least twice the CPUs): parts = maps x reduces objects, each with its cost."""
    nbytes = sum(m["bytes"] for _, m in bundles)
    return max(1, min(len(bundles), max(2 * job_cpus(), -(-nbytes // target))))


def random_shuffle(bundles: list[Bundle], seed: int | None, num_blocks: int | None
                   ) -> list[Bundle]:
    if not bundles:
        return []
    parts = num_blocks or shuffle_parts(bundles)
    base = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
    maps = [remote(_shuffle_map, num_returns=parts).remote(ref, parts, (base, 0, i))
            for i, (ref, _) in enumerate(bundles)]
    return _reduce_all(maps, parts, _shuffle_reduce, lambda j: ((base, 1, j),))


def randomize_block_order(bundles: list[Bundle], seed: int | None) -> list[Bundle]:
    order = np.random.default_rng(seed).permutation(len(bundles))
    return [bundles[i] for i in order]


# ------------------------------------------------------------------------------- sort, groupby

def _sample(block: Block, key: str, k: int) -> np.ndarray:
    col = block[key]
    if len(col) <= k:
        return col.copy()
    return col[np.linspace(0, len(col) - 1, k).astype(int)]


def _sort_map(block: Block, keys: list[str], desc: list[bool], bounds: np.ndarray) -> Any:
    parts = range_partition(block, keys[0], bounds, desc[0])
    return parts[0] if len(parts) == 1 else tuple(parts)


def _sort_reduce(keys: list[str], desc: list[bool], *parts: Block) -> tuple[Block, dict]:
    t0 = time.perf_counter()
    block = sort_block(concat(parts), keys, desc)
    return block, _meta(block, t0, "sort reduce")


def _check_keys(bundles: list[Bundle], keys: list[str]) -> None:
    for _, meta in bundles:
        if meta["rows"]:
            missing = [k for k in keys if k not in meta["schema"]]
            if missing:
                raise KeyError(f"no column {missing[0]!r} to sort or group by; the columns are "
                               f"{list(meta['schema'])}")
            return


def _range_parts(bundles: list[Bundle], keys: list[str], desc: list[bool], reducer: Callable,
                 reduce_args: tuple) -> list[Bundle]:
    _check_keys(bundles, keys)
    bundles = [b for b in bundles if b[1]["rows"]]
    if not bundles:
        return []
    parts = shuffle_parts(bundles)
    samples = hpcray.get([remote(_sample).remote(ref, keys[0], 32) for ref, _ in bundles])
    bounds = quantile_bounds(np.concatenate(samples), parts)
    bounds = np.unique(bounds)
    parts = len(bounds) + 1
    maps = [remote(_sort_map, num_returns=parts).remote(ref, keys, desc, bounds)
            for ref, _ in bundles]
    return _reduce_all(maps, parts, reducer, lambda j: reduce_args)


def sort(bundles: list[Bundle], keys: list[str], descending: list[bool]) -> list[Bundle]:
    return _range_parts(bundles, keys, descending, _sort_reduce, (keys, descending))


def _agg_reduce(keys: list[str], aggs: list[AggregateFn], *parts: Block) -> tuple[Block, dict]:
    t0 = time.perf_counter()
    block = aggregate_groups(sort_block(concat(parts), keys), keys, aggs)
    return block, _meta(block, t0, "aggregate")


def groupby_aggregate(bundles: list[Bundle], keys: list[str], aggs: list[AggregateFn]
                      ) -> list[Bundle]:
    return _range_parts(bundles, keys, [False] * len(keys), _agg_reduce, (keys, aggs))


def _map_groups_reduce(keys: list[str], fn: Callable, fmt: str, fn_args: tuple, fn_kwargs: dict,
                       *parts: Block) -> tuple[Block, dict]:
    t0 = time.perf_counter()
    block = sort_block(concat(parts), keys)
    starts = group_bounds(block, keys)
    outs = [from_batch(fn(to_batch(slice_block(block, a, b), fmt), *fn_args, **fn_kwargs))
            for a, b in itertools.pairwise(starts)] if num_rows(block) else []
    out = concat(outs)
    return out, _meta(out, t0, "map_groups")


def map_groups(bundles: list[Bundle], keys: list[str], fn: Callable, fmt: str, fn_args: tuple,
               fn_kwargs: dict) -> list[Bundle]:
    return _range_parts(bundles, keys, [False] * len(keys), _map_groups_reduce,
                        (keys, fn, fmt, fn_args, fn_kwargs))


def _partial_agg(block: Block, aggs: list[AggregateFn]) -> list:
    return [a.accumulate(a.init(None), block) for a in aggs]


def global_aggregate(bundles: list[Bundle], aggs: list[AggregateFn]) -> dict:
    """Each aggregation over all rows: partials per block in tasks, merged on the driver."""
    partials = hpcray.get([remote(_partial_agg).remote(ref, aggs) for ref, m in bundles
                           if m["rows"]])
    out = {}
    for i, agg in enumerate(aggs):
        acc = None
        for p in partials:
            acc = p[i] if acc is None else agg.merge(acc, p[i])
        out[agg.name] = agg.finalize(acc if acc is not None else agg.init(None))
    return out


# ------------------------------------------------------------------------------- zip

def _zip(a: Block, b: Block) -> tuple[Block, dict]:
    t0 = time.perf_counter()
    out = dict(a)
    for k, v in b.items():
        name = k
        i = 1
        while name in out:
            name = f"{k}_{i}"
            i += 1
        out[name] = v
    return out, _meta(out, t0, "zip")


def zip_bundles(left: list[Bundle], right: list[Bundle]) -> list[Bundle]:
    lrows = [m["rows"] for _, m in left]
    rrows = sum(m["rows"] for _, m in right)
    if sum(lrows) != rrows:
        raise ValueError(f"zip needs datasets with equal row counts, got {sum(lrows)} and {rrows}")
    cuts = np.concatenate([[0], np.cumsum(lrows)]).astype(int).tolist()
    aligned = gather(right, cuts)
    return _resolve([remote(_zip, num_returns=2).remote(a[0], b[0])
                     for a, b in zip(left, aligned)])
