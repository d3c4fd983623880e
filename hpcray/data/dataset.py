"""Dataset: a lazy plan of blocks with Ray Data's transforms, consumption and writes."""

from __future__ import annotations

import functools
import itertools
import types
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import hpcray

from . import alltoall
from .aggregate import AggregateFn, Count, Max, Mean, Min, Std, Sum
from .block import (
    BATCH_FORMATS,
    Batcher,
    Block,
    batches_of,
    column,
    concat,
    from_batch,
    from_rows,
    import_cupy,
    iter_rows,
    num_rows,
    take_rows,
    to_batch,
    to_cupy,
)
from .context import DataContext
from .datasink import Datasink
from .executor import (
    AllToAll,
    Bundle,
    DatasetStats,
    Limit,
    MapSpec,
    Plan,
    execute,
    job_cpus,
    remote,
)
from .prefetch import Prefetcher

DEFAULT_BATCH_SIZE = 1024


# ------------------------------------------------------------------------------ per-block UDFs

def _map_batches_apply(block: Block, udf: Any, batch_size: int | None, fmt: str, args: tuple,
                       kwargs: dict) -> Block:
    if num_rows(block) == 0:
        return block
    outs = []
    for b in batches_of(block, batch_size):
        res = udf(to_batch(b, fmt), *args, **kwargs)
        if isinstance(res, (types.GeneratorType, Iterator)):
            outs.extend(from_batch(r) for r in res)
        else:
            outs.append(from_batch(res))
    return concat(outs)


def _map_apply(block: Block, udf: Any, args: tuple, kwargs: dict) -> Block:
    return from_rows([udf(row, *args, **kwargs) for row in iter_rows(block)])


def _flat_map_apply(block: Block, udf: Any, args: tuple, kwargs: dict) -> Block:
    return from_rows([out for row in iter_rows(block) for out in udf(row, *args, **kwargs)])


def _filter_apply(block: Block, udf: Any, args: tuple, kwargs: dict) -> Block:
    keep = np.fromiter((bool(udf(row, *args, **kwargs)) for row in iter_rows(block)), dtype=bool,
                       count=num_rows(block))
    return take_rows(block, np.nonzero(keep)[0])


def _add_column_apply(block: Block, udf: Any, col: str, fmt: str) -> Block:
    out = dict(block)
    out[col] = column(udf(to_batch(block, fmt)))
    if len(out[col]) != num_rows(block):
        raise ValueError(f"add_column's function returned {len(out[col])} values for a batch of "
                         f"{num_rows(block)} rows")
    return out


def _select_apply(block: Block, _udf: Any, cols: list[str], drop: bool) -> Block:
    missing = [c for c in cols if c not in block]
    if missing and num_rows(block):
        raise KeyError(f"no column(s) {missing}; the columns are {list(block)}")
    if drop:
        return {k: v for k, v in block.items() if k not in cols}
    return {k: block[k] for k in cols if k in block}


def _rename_apply(block: Block, _udf: Any, names: dict) -> Block:
    return {names.get(k, k): v for k, v in block.items()}


def _sample_apply(block: Block, _udf: Any, fraction: float, seed: int | None) -> Block:
    n = num_rows(block)
    if seed is None:
        rng = np.random.default_rng()
    else:
        first = next(iter(block.values()), np.zeros(0))
        salt = zlib.crc32(np.ascontiguousarray(first[:16]).tobytes()) if first.dtype != object \
            else zlib.crc32(repr(list(first[:16])).encode())
        rng = np.random.default_rng([seed, salt, n])
    return take_rows(block, np.nonzero(rng.random(n) < fraction)[0])


def _is_class(fn: Any) -> bool:
    return isinstance(fn, type)


def pool_bounds(low: int, high: int, initial: int | None = None) -> tuple[int, int, int]:
    """(min, max, initial) actors of a pool, checked; initial defaults to min (Ray's)."""
    if not 1 <= low <= high:
        raise ValueError(f"an actor pool needs 1 <= min_size <= max_size, got min_size={low}, "
                         f"max_size={high}")
    start = low if initial is None else initial
    if not low <= start <= high:
        raise ValueError(f"an actor pool's initial_size must be between min_size and max_size "
                         f"({low} <= initial_size <= {high}), got initial_size={start}")
    return low, high, start


class ActorPoolStrategy:
    """Ray Data's compute strategy for a callable class: a pool of ``size`` actors, or one
    that starts with ``initial_size`` actors (default: min_size), grows up to ``max_size``
    while input waits and shrinks back to ``min_size`` when actors sit idle (the same as
    ``concurrency=(min_size, max_size, initial_size)``)."""

    def __init__(self, *, size: int | None = None, min_size: int | None = None,
                 max_size: int | None = None, initial_size: int | None = None,
                 max_tasks_in_flight_per_actor: int | None = None):
        if size is not None and (min_size, max_size, initial_size) != (None, None, None):
            raise ValueError("give ActorPoolStrategy either size, or min_size/max_size/"
                             "initial_size")
        if max_tasks_in_flight_per_actor is not None:
            if not isinstance(max_tasks_in_flight_per_actor, int) or \
                    max_tasks_in_flight_per_actor < 1:
                raise ValueError("max_tasks_in_flight_per_actor must be an int >= 1, got "
                                 f"{max_tasks_in_flight_per_actor!r}")
            if max_tasks_in_flight_per_actor != 2:  # Ray's own is a pipelining hint
                warnings.warn("hpcray's actor pools queue up to two blocks per actor and "
                              "then grow, up to max_size; max_tasks_in_flight_per_actor is "
                              "ignored", stacklevel=2)
        low = size if size is not None else (min_size or 1)
        high = size if size is not None else (
            max_size or max(low, initial_size or 0, job_cpus()))
        self.min_size, self.max_size, self.initial_size = pool_bounds(low, high, initial_size)

    def __repr__(self) -> str:
        return (f"ActorPoolStrategy(min_size={self.min_size}, max_size={self.max_size}, "
                f"initial_size={self.initial_size})")


class TaskPoolStrategy:
    """Ray Data's compute strategy for a function: one task per block (the default)."""

    def __init__(self, size: int | None = None):
        self.size = size


def _compute_concurrency(compute: Any, concurrency: int | tuple | None,
                         actors: bool) -> int | tuple | None:
    """concurrency from Ray's compute= (a strategy, or "actors"/"tasks")."""
    if isinstance(compute, TaskPoolStrategy) and compute.size is not None:
        if concurrency is not None and concurrency != compute.size:
            raise ValueError(f"compute=TaskPoolStrategy(size={compute.size}) and "
                             f"concurrency={concurrency!r} disagree: give one of them")
        return compute.size
    if compute is None or compute == "tasks" or isinstance(compute, TaskPoolStrategy):
        return concurrency
    if compute == "actors" or isinstance(compute, ActorPoolStrategy):
        if not actors:
            raise ValueError("an actor pool (compute=ActorPoolStrategy) runs a callable class: "
                             "pass a class whose __call__ maps a batch, or drop compute=")
        if isinstance(compute, ActorPoolStrategy):
            return (compute.min_size, compute.max_size, compute.initial_size)
        return concurrency
    raise ValueError(f"compute must be an ActorPoolStrategy, a TaskPoolStrategy, 'actors' or "
                     f"'tasks', got {compute!r}")


def _retry_args(ray_remote_args: dict) -> dict:
    """MapSpec's retry settings from Ray's ``max_retries`` / ``retry_exceptions``."""
    out: dict[str, Any] = {}
    if "max_retries" in ray_remote_args:
        out["max_retries"] = int(ray_remote_args["max_retries"])
    retry = ray_remote_args.get("retry_exceptions", False)
    if isinstance(retry, (list, tuple)):
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry):
            raise TypeError(f"retry_exceptions must be True/False or a list of exception "
                            f"classes, got {retry!r}")
        retry = tuple(retry)
    elif not isinstance(retry, bool):
        raise TypeError(f"retry_exceptions must be True/False or a list of exception classes, "
                        f"got {retry!r}")
    out["retry_exceptions"] = retry
    return out


class Schema:
    """Column names and types (Ray Data's ``Schema``)."""

    def __init__(self, schema: dict[str, str]):
        self.names = list(schema)
        self.types = list(schema.values())

    def __repr__(self) -> str:
        cols = "\n".join(f"{n}: {t}" for n, t in zip(self.names, self.types))
        return f"Column  Type\n------  ----\n{cols}"

    def __eq__(self, other) -> bool:
        return isinstance(other, Schema) and (self.names, self.types) == (other.names,
                                                                          other.types)


# ------------------------------------------------------------------------------ iteration

class DataIterator:
    """Iterates batches or rows of a dataset (or of one split of it)."""

    _prefetch: Prefetcher | None = None  # the latest iteration's

    def _blocks(self, prefetch: int) -> Iterator[Block]:  # pragma: no cover - overridden
        """The blocks of one pass, fetched ``prefetch`` blocks ahead (see Prefetcher)."""
        raise NotImplementedError

    def stats(self) -> str:
        """How the latest iteration prefetched: blocks fetched ahead, time spent waiting."""
        p = self._prefetch
        return f"Iterator: {p.describe()}" if p is not None else "Iterator: not iterated yet"

    def iter_batches(self, *, prefetch_batches: int = 1, batch_size: int | None = 256,
                     batch_format: str | None = "default", drop_last: bool = False,
                     local_shuffle_buffer_size: int | None = None,
                     local_shuffle_seed: int | None = None, device: str | None = None,
                     _collate_fn: Callable | None = None) -> Iterator[Any]:
        """Batches of batch_size rows (None: one per block) in batch_format; a background
        thread fetches the next prefetch_batches blocks to this rank while the current one is
        used (0: each block is fetched when needed). batch_format="cupy" or device="cuda"
        ("cuda:N": GPU N) gives dicts of CuPy arrays on the GPU."""
        gpu = _cuda_device(device)
        if gpu is not False:
            if batch_format not in (None, "default", "numpy", "cupy"):
                raise ValueError(f"device={device!r} gives batches of CuPy arrays: use "
                                 f"batch_format='cupy' (or 'numpy'), not {batch_format!r}")
            batch_format = "cupy"
        if batch_format not in BATCH_FORMATS and batch_format is not None:
            raise ValueError(f"batch_format must be one of {BATCH_FORMATS}, got "
                             f"{batch_format!r}")
        if batch_format == "cupy":
            import_cupy("CuPy batches (batch_format='cupy', device='cuda')")
        batcher = Batcher(batch_size, drop_last, local_shuffle_buffer_size, local_shuffle_seed)
        return self._iterate(batcher, prefetch_batches, batch_format,
                             None if gpu is False else gpu, _collate_fn)

    def _iterate(self, batcher: Batcher, prefetch: int, batch_format: str | None,
                 gpu: int | None, collate: Callable | None) -> Iterator[Any]:
        for batch in batcher.batches(self._blocks(prefetch)):
            out = to_cupy(batch, gpu) if batch_format == "cupy" else to_batch(batch, batch_format)
            yield collate(out) if collate is not None else out

    def iter_rows(self) -> Iterator[dict]:
        for block in self._blocks(2):
            yield from iter_rows(block)

    def schema(self) -> Schema | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def iter_torch_batches(self, *, prefetch_batches: int = 1, batch_size: int | None = 256,
                           dtypes: Any = None, device: str = "auto",
                           collate_fn: Callable | None = None, drop_last: bool = False,
                           local_shuffle_buffer_size: int | None = None,
                           local_shuffle_seed: int | None = None) -> Iterator[Any]:
        """Batches as dicts of torch tensors (or what collate_fn makes of numpy batches)."""
        import torch

        dev = None if device in ("auto", None, "cpu") else torch.device(device)

        def convert(batch: dict) -> Any:
            if collate_fn is not None:
                return collate_fn(batch)
            out = {}
            for k, v in batch.items():
                dt = dtypes.get(k) if isinstance(dtypes, dict) else dtypes
                # a block from another rank is a read-only buffer: the tensor shares it (as
                # in Ray; torch warns that it cannot mark a tensor read-only)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    t = torch.as_tensor(np.ascontiguousarray(v), dtype=dt)
                out[k] = t.to(dev) if dev is not None else t
            return out

        yield from self.iter_batches(prefetch_batches=prefetch_batches, batch_size=batch_size,
                                     batch_format="numpy", drop_last=drop_last,
                                     local_shuffle_buffer_size=local_shuffle_buffer_size,
                                     local_shuffle_seed=local_shuffle_seed, _collate_fn=convert)

    def iter_tf_batches(self, *, prefetch_batches: int = 1, batch_size: int | None = 256,
                        dtypes: Any = None, drop_last: bool = False,
                        local_shuffle_buffer_size: int | None = None,
                        local_shuffle_seed: int | None = None) -> Iterator[dict]:
        """Batches as dicts of TensorFlow tensors."""
        tf = _import_tensorflow("iter_tf_batches")

        def convert(batch: dict) -> dict:
            return {k: tf.convert_to_tensor(
                v, dtype=dtypes.get(k) if isinstance(dtypes, dict) else dtypes)
                for k, v in batch.items()}

        yield from self.iter_batches(prefetch_batches=prefetch_batches, batch_size=batch_size,
                                     batch_format="numpy", drop_last=drop_last,
                                     local_shuffle_buffer_size=local_shuffle_buffer_size,
                                     local_shuffle_seed=local_shuffle_seed, _collate_fn=convert)

    def to_tf(self, feature_columns: str | list[str], label_columns: str | list[str], *,
              additional_columns: str | list[str] | None = None, prefetch_batches: int = 1,
              batch_size: int = 1, drop_last: bool = False,
              local_shuffle_buffer_size: int | None = None,
              local_shuffle_seed: int | None = None, feature_type_spec: Any = None,
              label_type_spec: Any = None, additional_type_spec: Any = None) -> Any:
        """A ``tf.data.Dataset`` of (features, labels[, additional]) batches: a tensor per
        part when its columns are one name, a dict of tensors when a list. Each pass over it
        iterates this dataset (or shard) again."""
        tf = _import_tensorflow("to_tf")
        parts = [p for p in (feature_columns, label_columns, additional_columns)
                 if p is not None]
        specs = [feature_type_spec, label_type_spec, additional_type_spec][:len(parts)]
        types: dict[str, tuple] = {}
        if any(s is None for s in specs):  # dtypes and trailing shapes from the schema
            schema = self.schema()
            if schema is None:
                raise ValueError("to_tf needs type specs (feature_type_spec, ...) for an empty "
                                 "dataset")
            types = {n: _parse_type(t) for n, t in zip(schema.names, schema.types)}
            for cols in parts:
                missing = [c for c in ([cols] if isinstance(cols, str) else cols)
                           if c not in types]
                if missing:
                    raise KeyError(f"to_tf: no column(s) {missing}; the columns are "
                                   f"{schema.names}")

        def spec_of(cols: str | list[str]) -> Any:
            def one(c: str) -> Any:
                dtype, shape = types[c]
                return tf.TensorSpec(shape=(None, *shape), dtype=tf.as_dtype(dtype))
            return one(cols) if isinstance(cols, str) else {c: one(c) for c in cols}

        signature = tuple(s if s is not None else spec_of(c) for s, c in zip(specs, parts))

        def select(batch: dict, cols: str | list[str]) -> Any:
            return batch[cols] if isinstance(cols, str) else {c: batch[c] for c in cols}

        def generator() -> Iterator[tuple]:
            for batch in self.iter_batches(prefetch_batches=prefetch_batches,
                                           batch_size=batch_size, batch_format="numpy",
                                           drop_last=drop_last,
                                           local_shuffle_buffer_size=local_shuffle_buffer_size,
                                           local_shuffle_seed=local_shuffle_seed):
                yield tuple(select(batch, c) for c in parts)

        out = tf.data.Dataset.from_generator(generator, output_signature=signature)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = \
            tf.data.experimental.AutoShardPolicy.OFF  # already this worker's part
        return out.with_options(options)

    def to_blocks(self) -> list[Block]:
        return list(self._blocks(2))


def _cuda_device(device: str | None) -> int | None | bool:
    """False for host batches (None, "cpu", "auto"); for "cuda" None (the current GPU);
    for "cuda:N" N."""
    if device in (None, "cpu", "auto"):
        return False
    name, _, index = str(device).partition(":")
    if name == "cuda" and (not index or index.isdigit()):
        return int(index) if index else None
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (CuPy arrays on GPU N), got "
                     f"{device!r}")


def _parse_type(text: str) -> tuple[np.dtype, tuple]:
    """A Schema type ("float32", or "float32(3, 4)" for tensor rows) as (dtype, row shape)."""
    name, _, shape = text.partition("(")
    dims = tuple(int(d) for d in shape.rstrip(")").split(",") if d.strip())
    return np.dtype(name), dims


def _import_tensorflow(what: str) -> Any:
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ImportError(f"{what}() needs TensorFlow, which is not installed: "
                          "pip install tensorflow") from exc
    return tf


class _DatasetIterator(DataIterator):
    def __init__(self, ds: Dataset):
        self._ds = ds

    def _blocks(self, prefetch: int) -> Iterator[Block]:
        if not hpcray.is_initialized():
            hpcray.init()  # here, not in the prefetch thread: a plain script relaunches
        self._prefetch = Prefetcher(self._ds._bundles(), prefetch, lambda b: b[0].future())
        return (block for _, block in self._prefetch)

    def stats(self) -> str:
        return f"{self._ds.stats()}\n{super().stats()}"

    def schema(self) -> Schema | None:
        return self._ds.schema()


# ------------------------------------------------------------------------------ Dataset

class Dataset:
    """A lazy, distributed dataset: a plan of blocks made by tasks on the job's ranks."""

    def __init__(self, plan: Plan):
        self._plan = plan
        self._last_stats: DatasetStats | None = None
        self._splits: dict[int, list] = {}

    def __repr__(self) -> str:
        return f"Dataset(plan={self._plan.describe()})"

    # ---------------------------------------------------------------- plumbing

    def _then(self, op) -> Dataset:
        return Dataset(self._plan.then(op))

    def _bundles(self) -> Iterator[Bundle]:
        if isinstance(self._plan.source, list) and not self._plan.ops:
            return iter(self._plan.source)  # materialized: its stats stay those that made it
        self._last_stats = DatasetStats()
        return execute(self._plan, self._last_stats)

    def _all_bundles(self) -> list[Bundle]:
        return list(self._bundles())

    def _map(self, name: str, apply: Callable, fn: Any = None, *, keeps_rows: bool = False,
             fn_constructor_args: tuple = (), fn_constructor_kwargs: dict | None = None,
             concurrency: int | tuple | None = None, num_cpus: float | None = None,
             num_gpus: float | None = None, compute: Any = None,
             ray_remote_args: dict | None = None) -> Dataset:
        actors = _is_class(fn)
        ray_remote_args = dict(ray_remote_args or {})
        if compute is None:  # map/flat_map/filter take it among their keyword arguments
            compute = ray_remote_args.pop("compute", None)
        concurrency = _compute_concurrency(compute, concurrency, actors)
        if not actors and (fn_constructor_args or fn_constructor_kwargs):
            raise ValueError("fn_constructor_args/kwargs are only for callable classes")
        if isinstance(concurrency, tuple):
            if len(concurrency) not in (2, 3) or not all(isinstance(c, int)
                                                         for c in concurrency):
                raise ValueError(f"concurrency must be n, (min, max) or (min, max, initial) "
                                 f"actors, got {concurrency}")
            pool_bounds(*concurrency)
        spec = MapSpec(name=name, apply=apply, fn=fn, ctor_args=tuple(fn_constructor_args),
                       ctor_kwargs=dict(fn_constructor_kwargs or {}),
                       compute="actors" if actors else "tasks", concurrency=concurrency,
                       num_cpus=num_cpus, num_gpus=num_gpus, keeps_rows=keeps_rows,
                       **_retry_args(ray_remote_args))
        return self._then(spec)

    # ---------------------------------------------------------------- transforms

    def map_batches(self, fn: Any, *, batch_size: int | None | str = None,
                    batch_format: str | None = "default", zero_copy_batch: bool = False,
                    fn_args: tuple = (), fn_kwargs: dict | None = None,
                    fn_constructor_args: tuple = (), fn_constructor_kwargs: dict | None = None,
                    concurrency: int | tuple | None = None, num_cpus: float | None = None,
                    num_gpus: float | None = None, compute: Any = None,
                    **ray_remote_args) -> Dataset:
        """fn applied to batches (a dict of numpy arrays, a pandas DataFrame or a pyarrow Table,
        per batch_format). A callable class runs on a pool of ``concurrency`` actors, each
        building it once (with fn_constructor_args/kwargs). batch_size=None (the default, as
        in Ray 2.60) passes each block whole; "default" means 1024."""
        if batch_size == "default":
            batch_size = DEFAULT_BATCH_SIZE
        if batch_format not in (None, *BATCH_FORMATS):
            raise ValueError(f"batch_format must be one of {BATCH_FORMATS}, got "
                             f"{batch_format!r}")
        apply = functools.partial(_map_batches_apply, batch_size=batch_size,
                                  fmt=batch_format or "default", args=tuple(fn_args),
                                  kwargs=dict(fn_kwargs or {}))
        name = f"MapBatches({getattr(fn, '__name__', type(fn).__name__)})"
        out = self._map(name, apply, fn, fn_constructor_args=fn_constructor_args,
                        fn_constructor_kwargs=fn_constructor_kwargs, concurrency=concurrency,
                        num_cpus=num_cpus, num_gpus=num_gpus, compute=compute,
                        ray_remote_args=ray_remote_args)
        out._plan.ops[-1].min_rows = batch_size
        return out

    def _row_op(self, kind: str, apply: Callable, fn: Any, fn_args, fn_kwargs, **kw) -> Dataset:
        name = f"{kind}({getattr(fn, '__name__', type(fn).__name__)})"
        return self._map(name, functools.partial(apply, args=tuple(fn_args),
                                                 kwargs=dict(fn_kwargs or {})), fn, **kw)

    def map(self, fn: Any, *, fn_args: tuple = (), fn_kwargs: dict | None = None,
            fn_constructor_args: tuple = (), fn_constructor_kwargs: dict | None = None,
            concurrency: int | tuple | None = None, num_cpus: float | None = None,
            num_gpus: float | None = None, **ray_remote_args) -> Dataset:
        """fn applied to each row (a dict), returning a dict."""
        return self._row_op("Map", _map_apply, fn, fn_args, fn_kwargs, keeps_rows=True,
                            fn_constructor_args=fn_constructor_args,
                            fn_constructor_kwargs=fn_constructor_kwargs,
                            concurrency=concurrency, num_cpus=num_cpus, num_gpus=num_gpus,
                            ray_remote_args=ray_remote_args)

    def flat_map(self, fn: Any, *, fn_args: tuple = (), fn_kwargs: dict | None = None,
                 fn_constructor_args: tuple = (), fn_constructor_kwargs: dict | None = None,
                 concurrency: int | tuple | None = None, num_cpus: float | None = None,
                 num_gpus: float | None = None, **ray_remote_args) -> Dataset:
        """fn applied to each row, returning a list of rows."""
        return self._row_op("FlatMap", _flat_map_apply, fn, fn_args, fn_kwargs,
                            fn_constructor_args=fn_constructor_args,
                            fn_constructor_kwargs=fn_constructor_kwargs,
                            concurrency=concurrency, num_cpus=num_cpus, num_gpus=num_gpus,
                            ray_remote_args=ray_remote_args)

    def filter(self, fn: Any, *, fn_args: tuple = (), fn_kwargs: dict | None = None,
               fn_constructor_args: tuple = (), fn_constructor_kwargs: dict | None = None,
               concurrency: int | tuple | None = None, num_cpus: float | None = None,
               num_gpus: float | None = None, **ray_remote_args) -> Dataset:
        """The rows for which fn(row) is true."""
        return self._row_op("Filter", _filter_apply, fn, fn_args, fn_kwargs,
                            fn_constructor_args=fn_constructor_args,
                            fn_constructor_kwargs=fn_constructor_kwargs,
                            concurrency=concurrency, num_cpus=num_cpus, num_gpus=num_gpus,
                            ray_remote_args=ray_remote_args)

    def add_column(self, col: str, fn: Callable, *, batch_format: str = "pandas",
                   **kwargs) -> Dataset:
        """A new column col = fn(batch), computed per block."""
        return self._map(f"AddColumn({col})", functools.partial(_add_column_apply, col=col,
                                                                fmt=batch_format), fn,
                         keeps_rows=True)

    def drop_columns(self, cols: list[str] | str, **kwargs) -> Dataset:
        cols = [cols] if isinstance(cols, str) else list(cols)
        return self._map("DropColumns", functools.partial(_select_apply, cols=cols, drop=True),
                         keeps_rows=True)

    def select_columns(self, cols: list[str] | str, **kwargs) -> Dataset:
        cols = [cols] if isinstance(cols, str) else list(cols)
        return self._map("SelectColumns", functools.partial(_select_apply, cols=cols,
                                                            drop=False), keeps_rows=True)

    def rename_columns(self, names: dict[str, str] | list[str], **kwargs) -> Dataset:
        """Renames columns by a {old: new} dict (or a list of new names in order)."""
        if isinstance(names, list):
            old = self.columns()
            if len(old) != len(names):
                raise ValueError(f"rename_columns got {len(names)} names for {len(old)} columns")
            names = dict(zip(old, names))
        return self._map("RenameColumns", functools.partial(_rename_apply, names=dict(names)),
                         keeps_rows=True)

    def random_sample(self, fraction: float, *, seed: int | None = None) -> Dataset:
        """Each row kept with probability fraction."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        return self._map("RandomSample", functools.partial(_sample_apply, fraction=fraction,
                                                           seed=seed))

    def limit(self, limit: int) -> Dataset:
        """The first limit rows; upstream work stops once they are made."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        return self._then(Limit(int(limit)))

    # ---------------------------------------------------------------- all-to-all

    def random_shuffle(self, *, seed: int | None = None, num_blocks: int | None = None,
                       **kwargs) -> Dataset:
        """Rows in a random order (the same order for the same seed)."""
        return self._then(AllToAll("RandomShuffle", functools.partial(
            alltoall.random_shuffle, seed=seed, num_blocks=num_blocks)))

    def randomize_block_order(self, *, seed: int | None = None) -> Dataset:
        return self._then(AllToAll("RandomizeBlockOrder", functools.partial(
            alltoall.randomize_block_order, seed=seed)))

    def sort(self, key: str | list[str], descending: bool | list[bool] = False) -> Dataset:
        """Rows sorted by key(s) (stable), range-partitioned across blocks."""
        keys = [key] if isinstance(key, str) else list(key)
        desc = descending if isinstance(descending, list) else [descending] * len(keys)
        if len(desc) != len(keys):
            raise ValueError("give one descending flag per key")
        return self._then(AllToAll("Sort", functools.partial(alltoall.sort, keys=keys,
                                                             descending=desc)))

    def groupby(self, key: str | list[str] | None) -> GroupedData:
        return GroupedData(self, key)

    def repartition(self, num_blocks: int, *, shuffle: bool = False, **kwargs) -> Dataset:
        """num_blocks blocks of about equal rows (shuffle=True: through a random shuffle)."""
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if shuffle:
            return self.random_shuffle(num_blocks=num_blocks)
        return self._then(AllToAll("Repartition", functools.partial(alltoall.repartition,
                                                                    n=num_blocks)))

    def union(self, *others: Dataset) -> Dataset:
        """This dataset's rows followed by the others'."""
        plans = [o._plan for o in others]

        def combine(bundles: list[Bundle]) -> list[Bundle]:
            return bundles + [b for p in plans for b in execute(p)]

        return self._then(AllToAll("Union", combine))

    def zip(self, other: Dataset) -> Dataset:
        """Columns of both side by side, row by row (equal row counts; clashing names of
        other get a suffix _1)."""
        plan = other._plan

        def combine(bundles: list[Bundle]) -> list[Bundle]:
            return alltoall.zip_bundles(bundles, list(execute(plan)))

        return self._then(AllToAll("Zip", combine))

    # ---------------------------------------------------------------- aggregates

    def aggregate(self, *aggs: AggregateFn) -> dict:
        return alltoall.global_aggregate(self._all_bundles(), list(aggs))

    def _agg1(self, agg_cls, on, **kw):
        if isinstance(on, list):
            return {f"{agg_cls.kind}({c})": v for c, v in zip(
                on, self.aggregate(*[agg_cls(c, **kw) for c in on]).values())}
        return next(iter(self.aggregate(agg_cls(on, **kw)).values()))

    def sum(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Any:
        return self._agg1(Sum, on, ignore_nulls=ignore_nulls)

    def min(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Any:
        return self._agg1(Min, on, ignore_nulls=ignore_nulls)

    def max(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Any:
        return self._agg1(Max, on, ignore_nulls=ignore_nulls)

    def mean(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Any:
        return self._agg1(Mean, on, ignore_nulls=ignore_nulls)

    def std(self, on: str | list[str] | None = None, ddof: int = 1,
            ignore_nulls: bool = True) -> Any:
        return self._agg1(Std, on, ddof=ddof, ignore_nulls=ignore_nulls)

    def unique(self, column: str) -> list:
        return list(self.select_columns([column]).groupby(column).count().to_pandas()[column])

    # ---------------------------------------------------------------- consumption

    def iterator(self) -> DataIterator:
        return _DatasetIterator(self)

    def iter_batches(self, **kwargs) -> Iterator[Any]:
        return self.iterator().iter_batches(**kwargs)

    def iter_torch_batches(self, **kwargs) -> Iterator[Any]:
        return self.iterator().iter_torch_batches(**kwargs)

    def iter_rows(self) -> Iterator[dict]:
        return self.iterator().iter_rows()

    def iter_tf_batches(self, **kwargs) -> Iterator[dict]:
        return self.iterator().iter_tf_batches(**kwargs)

    def to_tf(self, feature_columns: str | list[str], label_columns: str | list[str],
              **kwargs) -> Any:
        return self.iterator().to_tf(feature_columns, label_columns, **kwargs)

    to_tf.__doc__ = DataIterator.to_tf.__doc__

    iter_batches.__doc__ = DataIterator.iter_batches.__doc__

    def take(self, limit: int = 20) -> list[dict]:
        return list(itertools.islice(self.limit(limit).iter_rows(), limit))

    def take_batch(self, batch_size: int = 20, *, batch_format: str | None = "default") -> Any:
        blocks = self.limit(batch_size).iterator().to_blocks()
        return to_batch(concat(blocks), batch_format)

    def take_all(self, limit: int | None = None) -> list[dict]:
        rows = list(self.iter_rows())
        if limit is not None and len(rows) > limit:
            raise ValueError(f"the dataset has more than {limit} rows")
        return rows

    def show(self, limit: int = 20) -> None:
        for row in self.take(limit):
            print(row)

    def count(self) -> int:
        """Rows; from metadata alone when the plan allows, else by executing (no block
        comes to the driver)."""
        rows = self._plan.known_rows()
        if rows is not None:
            return rows
        return sum(m["rows"] for _, m in self._bundles())

    def schema(self) -> Schema | None:
        """Column names and types, from the first block (executing as little as that needs)."""
        plan = self._plan
        bundles = plan.source if isinstance(plan.source, list) and not plan.ops \
            else self.limit(1)._bundles()
        for _, meta in bundles:
            if meta["schema"]:
                return Schema(meta["schema"])
        return None

    def columns(self) -> list[str]:
        schema = self.schema()
        return schema.names if schema else []

    def materialize(self) -> MaterializedDataset:
        """Executes the plan once; the blocks stay on the ranks that made them."""
        bundles = self._all_bundles()
        out = MaterializedDataset(Plan(bundles))
        out._last_stats = self._last_stats
        return out

    def stats(self) -> str:
        """Per-operator wall time, rows and bytes of the last execution."""
        return (self._last_stats or DatasetStats()).to_string()

    def to_pandas(self, limit: int | None = None) -> Any:
        import pandas as pd

        ds = self.limit(limit) if limit is not None else self
        block = concat(ds.iterator().to_blocks())
        return to_batch(block, "pandas") if block else pd.DataFrame()

    def to_numpy_refs(self, *, column: str | None = None) -> list:
        """One ref per block: a dict of arrays, or the array of column."""
        return [remote(_to_numpy).remote(ref, column) for ref, _ in self._bundles()]

    def get_internal_block_refs(self) -> list:
        return [ref for ref, _ in self._bundles()]

    def num_blocks(self) -> int:
        return len(self._all_bundles())

    def size_bytes(self) -> int:
        return sum(m["bytes"] for _, m in self._bundles())

    def input_files(self) -> list[str]:
        src = self._plan.source
        if isinstance(src, list):
            return []
        return sorted({t.args[0] for t in src.plan(self._plan.num_blocks)
                       if t.args and isinstance(t.args[0], str)})

    # ---------------------------------------------------------------- splits

    def split(self, n: int, *, equal: bool = False, locality_hints: Any = None
              ) -> list[MaterializedDataset]:
        """n materialized parts: whole blocks each (equal=True: exactly equal rows, the
        remainder dropped)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        bundles = self._all_bundles()
        if equal:
            total = sum(m["rows"] for _, m in bundles)
            per = total // n
            parts = alltoall.gather(bundles, [per * k for k in range(n + 1)])
            return [MaterializedDataset(Plan([p])) for p in parts]
        groups = np.array_split(np.arange(len(bundles)), n)
        return [MaterializedDataset(Plan([bundles[i] for i in g])) for g in groups]

    def split_at_indices(self, indices: list[int]) -> list[MaterializedDataset]:
        """Parts [0, i0), [i0, i1), ..., [ik, end) of the rows."""
        if any(b < a for a, b in itertools.pairwise(indices)) or any(i < 0 for i in indices):
            raise ValueError(f"indices must be sorted and >= 0, got {indices}")
        bundles = self._all_bundles()
        rows = [m["rows"] for _, m in bundles]
        total = sum(rows)
        cuts = [0, *[min(i, total) for i in indices], total]
        return [MaterializedDataset(Plan(_rows_between(bundles, rows, a, b)))
                for a, b in itertools.pairwise(cuts)]

    def split_proportionately(self, proportions: list[float]) -> list[MaterializedDataset]:
        if any(p <= 0 for p in proportions) or sum(proportions) >= 1:
            raise ValueError("proportions must be > 0 and sum to less than 1")
        total = self.count()
        cuts, acc = [], 0.0
        for p in proportions:
            acc += p
            cuts.append(int(total * acc))
        return self.split_at_indices(cuts)

    def train_test_split(self, test_size: float, *, shuffle: bool = False,
                         seed: int | None = None) -> tuple[MaterializedDataset,
                                                           MaterializedDataset]:
        """(train, test); test_size is a fraction of the rows or a row count."""
        ds = self.random_shuffle(seed=seed) if shuffle else self
        ds = ds.materialize()
        total = ds.count()
        if isinstance(test_size, float):
            if not 0 < test_size < 1:
                raise ValueError(f"a float test_size must be in (0, 1), got {test_size}")
            n_test = int(np.ceil(total * test_size))
        else:
            if not 0 < test_size < total:
                raise ValueError(f"an int test_size must be in (0, {total}), got {test_size}")
            n_test = test_size
        train, test = ds.split_at_indices([total - n_test])
        return train, test

    def streaming_split(self, n: int, *, equal: bool = False, locality_hints: Any = None
                        ) -> list[DataIterator]:
        """n iterators, one per consumer (e.g. training workers), fed by one execution of the
        dataset per epoch; with equal=True every consumer gets exactly as many rows."""
        from .split import streaming_split

        return streaming_split(self, n, equal)

    def shard(self, count: int, index: int) -> DataIterator:
        """Worker index's part of count (what a trainer's datasets= hands each worker): the
        iterators of one streaming_split(count, equal=True), made anew when worker 0's part is
        asked for (each fit() attempt gets its own coordinator)."""
        if index == 0 or count not in self._splits:
            self._splits[count] = self.streaming_split(count, equal=True)
        return self._splits[count][index]

    # ---------------------------------------------------------------- writes

    def write_datasink(self, datasink: Datasink, *, ray_remote_args: dict | None = None,
                       concurrency: int | None = None) -> None:
        """Writes the dataset through a custom Datasink: write() runs in a task per block on
        the rank holding it (at most concurrency at once), on_write_start/complete/failed on
        the driver. ray_remote_args are the write tasks' options (num_cpus, ...)."""
        from .write import write_datasink

        write_datasink(self, datasink, ray_remote_args, concurrency)

    def write_parquet(self, path: str, *, ray_remote_args: dict | None = None,
                      concurrency: int | None = None, **arrow_parquet_args) -> None:
        """A Parquet file per block in the folder path."""
        self._write("parquet", path, arrow_parquet_args, ray_remote_args, concurrency)

    def write_csv(self, path: str, *, ray_remote_args: dict | None = None,
                  concurrency: int | None = None, **arrow_csv_args) -> None:
        """A CSV file per block in the folder path."""
        self._write("csv", path, arrow_csv_args, ray_remote_args, concurrency)

    def write_json(self, path: str, *, ray_remote_args: dict | None = None,
                   concurrency: int | None = None, **pandas_json_args) -> None:
        """A JSON-lines file per block in the folder path."""
        self._write("json", path, pandas_json_args, ray_remote_args, concurrency)

    def write_numpy(self, path: str, *, column: str | None = None,
                    ray_remote_args: dict | None = None, concurrency: int | None = None,
                    **kwargs) -> None:
        """A .npy file of column per block in the folder path."""
        self._write("npy", path, {"column": column}, ray_remote_args, concurrency)

    def write_hdf5(self, path: str, *, ray_remote_args: dict | None = None,
                   concurrency: int | None = None, **kwargs) -> None:
        """One HDF5 file at path with a dataset per column: each block is written by its own
        task to path's .parts folder, and path joins them as virtual datasets (no copy)."""
        from .write import HDF5Datasink

        self.write_datasink(HDF5Datasink(path), ray_remote_args=ray_remote_args,
                            concurrency=concurrency)

    def _write(self, fmt: str, path: str, kwargs: dict, ray_remote_args: dict | None,
               concurrency: int | None) -> None:
        from .write import FileDatasink

        self.write_datasink(FileDatasink(path, fmt, kwargs), ray_remote_args=ray_remote_args,
                            concurrency=concurrency)


def _to_numpy(block: Block, column_name: str | None) -> Any:
    return block[column_name] if column_name is not None else block


class MaterializedDataset(Dataset):
    """A dataset whose blocks exist (on the ranks that made them)."""

    def __repr__(self) -> str:
        return f"MaterializedDataset(num_blocks={len(self._plan.source)})"

    def num_blocks(self) -> int:
        return len(self._plan.source) if not self._plan.ops else super().num_blocks()


class GroupedData:
    """``ds.groupby(key)``: aggregations per group (sorted by key), or map_groups."""

    def __init__(self, ds: Dataset, key: str | list[str] | None):
        self._ds = ds
        self._keys = [] if key is None else ([key] if isinstance(key, str) else list(key))

    def aggregate(self, *aggs: AggregateFn) -> Dataset:
        if not self._keys:
            row = self._ds.aggregate(*aggs)
            return from_blocks_local([{k: column([v]) for k, v in row.items()}])
        return self._ds._then(AllToAll("Aggregate", functools.partial(
            alltoall.groupby_aggregate, keys=self._keys, aggs=list(aggs))))

    def _one(self, cls, on, **kw) -> Dataset:
        cols = on if isinstance(on, list) else [on]
        return self.aggregate(*[cls(c, **kw) for c in cols])

    def count(self) -> Dataset:
        return self.aggregate(Count())

    def sum(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Dataset:
        return self._one(Sum, on, ignore_nulls=ignore_nulls)

    def min(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Dataset:
        return self._one(Min, on, ignore_nulls=ignore_nulls)

    def max(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Dataset:
        return self._one(Max, on, ignore_nulls=ignore_nulls)

    def mean(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Dataset:
        return self._one(Mean, on, ignore_nulls=ignore_nulls)

    def std(self, on: str | list[str] | None = None, ddof: int = 1,
            ignore_nulls: bool = True) -> Dataset:
        return self._one(Std, on, ddof=ddof, ignore_nulls=ignore_nulls)

    def map_groups(self, fn: Callable, *, batch_format: str | None = "default",
                   fn_args: tuple = (), fn_kwargs: dict | None = None, **kwargs) -> Dataset:
        """fn applied to each group as one batch; groups in key order."""
        if not self._keys:
            raise ValueError("map_groups needs a key: ds.groupby('col').map_groups(fn)")
        return self._ds._then(AllToAll("MapGroups", functools.partial(
            alltoall.map_groups, keys=self._keys, fn=fn, fmt=batch_format or "default",
            fn_args=tuple(fn_args), fn_kwargs=dict(fn_kwargs or {}))))


def from_blocks_local(blocks: list[Block]) -> MaterializedDataset:
    """Blocks made on this process, put into the object store."""
    from .executor import _meta

    bundles = []
    for b in blocks:
        bundles.append((hpcray.put(b), _meta(b, 0.0, "from driver")))
    return MaterializedDataset(Plan(bundles))


def default_min_blocks() -> int:
    ctx = DataContext.get_current()
    return ctx.min_num_blocks or 2 * job_cpus()


def items_to_blocks(items: list, n: int | None) -> list[Block]:
    k = max(1, min(len(items), n or min(len(items), default_min_blocks())))
    bounds = [len(items) * i // k for i in range(k + 1)]
    return [from_rows(items[a:b]) for a, b in itertools.pairwise(bounds)] or [{}]


def _rows_between(bundles: list[Bundle], rows: list[int], a: int, b: int) -> list[Bundle]:
    """Bundles holding rows [a, b): whole blocks kept, the blocks at the edges cut."""
    out = []
    for i, s, e in alltoall.row_pieces(rows, [a, b])[0]:
        out.append(bundles[i] if (s, e) == (0, rows[i]) else
                   alltoall.gather([bundles[i]], [s, e])[0])
    return out
