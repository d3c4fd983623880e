"""The streaming executor: runs a dataset's fused stages on the job's ranks from the driver.

Blocks are hpcray objects: a task's output block stays on the rank that made it and moves
straight to the rank of the task that reads it; the driver only sees small metadata. Each stage
keeps a bounded number of tasks and bytes in flight, so a stage whose consumer lags stops
submitting (backpressure) and memory stays flat however large the dataset is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hpcray

from ..exceptions import HpcrayError
from .block import Block, concat, num_rows, schema_of, size_bytes, slice_block
from .context import DataContext
from .datasource import PlannedRead, Source

Bundle = tuple  # (ObjectRef of a block, its metadata dict)


class UserCodeException(HpcrayError):
    """A read or a user function failed; the message names the operator, file and rows."""


# ---------------------------------------------------------------------------------- the plan

@dataclass
class MapSpec:
    """A per-block transform: ``apply(block, udf) -> block``; udf is fn, or an instance of the
    class fn (built once per actor) when compute is "actors"."""

    name: str
    apply: Callable[[Block, Any], Block]
    fn: Any = None
    ctor_args: tuple = ()
    ctor_kwargs: dict = field(default_factory=dict)
    compute: str = "tasks"
    concurrency: int | tuple | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    keeps_rows: bool = False
    min_rows: int | None = None  # map_batches' batch_size: small input blocks are bundled
    # Ray's ray_remote_args: a task whose rank dies runs again up to max_retries times (-1:
    # always), as does the UDF when it raises one of retry_exceptions (True: any exception)
    max_retries: int = 3
    retry_exceptions: bool | tuple = False

    def make_udf(self) -> Any:
        if self.compute == "actors":
            return self.fn(*self.ctor_args, **self.ctor_kwargs)
        return self.fn


@dataclass
class AllToAll:
    """A barrier: ``fn(bundles) -> bundles`` once every input block exists."""

    name: str
    fn: Callable[[list[Bundle]], list[Bundle]]


@dataclass
class Limit:
    n: int
    name: str = "Limit"


@dataclass
class Plan:
    """A source (a Source or materialized bundles) and the operators after it."""

    source: Source | list
    ops: list = field(default_factory=list)
    num_blocks: int | None = None

    def then(self, op) -> Plan:
        return Plan(self.source, [*self.ops, op], self.num_blocks)

    def known_rows(self) -> int | None:
        """The row count if it is known without executing, else None."""
        if isinstance(self.source, Source):
            rows = self.source.num_rows()
        else:
            rows = sum(m["rows"] for _, m in self.source)
        for op in self.ops:
            if rows is None:
                return None
            if isinstance(op, Limit):
                rows = min(rows, op.n)
            elif isinstance(op, MapSpec) and op.keeps_rows or isinstance(op, AllToAll) and op.name in ("RandomShuffle", "Sort", "Repartition",
                                                          "RandomizeBlockOrder"):
                continue
            else:
                return None
        return rows

    def describe(self) -> str:
        first = self.source.name if isinstance(self.source, Source) else "FromBlocks"
        return " -> ".join([first, *(op.name for op in self.ops)])


# ---------------------------------------------------------------------------------- on workers

def _meta(block: Block, t0: float, desc: str) -> dict:
    return {"rows": num_rows(block), "bytes": size_bytes(block), "schema": schema_of(block),
            "wall": time.perf_counter() - t0, "desc": desc}


def apply_chain(block: Block, chain: list[MapSpec], udfs: list, desc: str) -> Block:
    for spec, udf in zip(chain, udfs):
        attempt = 0
        while True:
            try:
                block = spec.apply(block, udf)
                break
            except Exception as exc:
                if retriable(exc, spec.retry_exceptions, attempt, spec.max_retries):
                    attempt += 1
                    time.sleep(min(1.0, 0.05 * 2 ** attempt))
                    continue
                tried = f" (attempt {attempt + 1})" if attempt else ""
                raise UserCodeException(f"operator {spec.name} failed on {desc}{tried}: "
                                        f"{type(exc).__name__}: {exc}") from exc
    return block


def retriable(exc: BaseException, retry: bool | tuple, attempt: int, max_retries: int) -> bool:
    """Whether a UDF that raised exc on its attempt-th retry runs again (Ray's
    retry_exceptions: True for any exception, or a list of exception types)."""
    if not retry or (0 <= max_retries <= attempt):
        return False
    return retry is True or isinstance(exc, tuple(retry))


def _read(task: PlannedRead, op: str, retries: int) -> Block:
    for attempt in range(retries + 1):
        try:
            return task()
        except OSError as exc:
            if attempt == retries or isinstance(exc, FileNotFoundError):
                raise UserCodeException(f"operator {op} failed to read {task.desc}: "
                                        f"{type(exc).__name__}: {exc}") from exc
            time.sleep(0.05 * 2 ** attempt)
        except Exception as exc:
            raise UserCodeException(f"operator {op} failed to read {task.desc}: "
                                    f"{type(exc).__name__}: {exc}") from exc
    raise AssertionError("unreachable")


def run_task(chain: list[MapSpec], op: str, desc: str, retries: int, *srcs: Any
             ) -> tuple[Block, dict]:
    """One task of a fused stage: read (or take the input blocks), then apply the chain."""
    t0 = time.perf_counter()
    if len(srcs) == 1 and isinstance(srcs[0], PlannedRead):
        block = _read(srcs[0], op, retries)
        desc = srcs[0].desc
    else:
        block = concat(srcs)
    block = apply_chain(block, chain, [s.make_udf() for s in chain], desc)
    return block, _meta(block, t0, desc)


class MapWorker:
    """An actor of a map_batches pool: builds the user's class once, then maps blocks."""

    def __init__(self, chain: list[MapSpec]):
        self.chain = chain
        self.udfs = [s.make_udf() for s in chain]

    def run(self, desc: str, *blocks: Block) -> tuple[Block, dict]:
        t0 = time.perf_counter()
        block = apply_chain(concat(blocks), self.chain, self.udfs, desc)
        return block, _meta(block, t0, desc)

    def ready(self) -> bool:
        return True


def slice_task(block: Block, start: int, stop: int) -> tuple[Block, dict]:
    t0 = time.perf_counter()
    out = slice_block(block, start, stop)
    return out, _meta(out, t0, f"rows {start}-{stop}")


def concat_task(*blocks: Block) -> tuple[Block, dict]:
    t0 = time.perf_counter()
    out = concat(blocks)
    return out, _meta(out, t0, "concat")


_remote_cache: dict[str, Any] = {}


def remote(target: Callable, **options) -> Any:
    """A function as a hpcray task, or a class as an actor class (made once per process),
    with these options."""
    key = f"{target.__module__}.{target.__qualname__}"
    made = _remote_cache.get(key)
    if made is None:
        made = _remote_cache[key] = hpcray.remote(target)
    return made.options(**options) if options else made


def job_cpus() -> int:
    try:
        return max(1, int(hpcray.cluster_resources().get("CPU", 1)))
    except Exception:  # noqa: BLE001 - inside a worker without a head view
        return 2


def job_memory() -> float:
    mem = None
    with contextlib.suppress(Exception):  # inside a worker without a head view
        mem = hpcray.cluster_resources().get("memory")
    if mem:
        return float(mem)
    import psutil

    return float(psutil.virtual_memory().total)


# ---------------------------------------------------------------------------------- stats

@dataclass
class OpStats:
    name: str
    tasks: int = 0
    rows: int = 0
    bytes: int = 0
    task_wall: float = 0.0
    start: float | None = None
    end: float | None = None
    expected: int | None = None  # blocks, where known ahead
    pool: list[int] = field(default_factory=list)  # an actor pool's sizes, as it changed

    def line(self) -> str:
        wall = (self.end or time.perf_counter()) - (self.start or time.perf_counter())
        rate = self.bytes / wall / 1e6 if wall > 0 else 0.0
        actors = f", actors {'->'.join(map(str, self.pool))}" if self.pool else ""
        return (f"{self.name}: {self.tasks} tasks, {self.rows} rows, {_fmt_bytes(self.bytes)}, "
                f"{wall:.2f}s wall, {self.task_wall:.2f}s in tasks, {rate:.1f} MB/s{actors}")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class DatasetStats:
    """Per-operator wall time, rows and bytes of the dataset's last execution."""

    def __init__(self):
        self.ops: list[OpStats] = []
        self.start = time.perf_counter()
        self.end: float | None = None

    def add(self, name: str) -> OpStats:
        st = OpStats(name)
        self.ops.append(st)
        return st

    def to_string(self) -> str:
        if not self.ops:
            return "the dataset has not been executed yet"
        total = (self.end or time.perf_counter()) - self.start
        lines = [f"Operator {i}: {op.line()}" for i, op in enumerate(self.ops)]
        return "\n".join([*lines, f"Total: {total:.2f}s"])

    __str__ = to_string


# A plain ``python script.py`` run re-executes the driver under mpiexec, whose output is a pipe:
# whether the user's terminal is there is noted when hpcray.data is first imported (before
# hpcray.init) and inherited through the environment. HPCRAY_DATA_PROGRESS=1/0 forces it.
os.environ.setdefault("HPCRAY_DATA_PROGRESS", "1" if sys.stderr.isatty() else "0")


class _Progress:
    """A line per operator on stderr while executing, only on a terminal."""

    def __init__(self, stats: DatasetStats):
        ctx = DataContext.get_current()
        self.on = ctx.enable_progress_bars and (
            sys.stderr.isatty() or os.environ.get("HPCRAY_DATA_PROGRESS") == "1")
        self.stats = stats
        self.last = 0.0
        self.lines = 0

    def update(self, force: bool = False) -> None:
        if not self.on:
            return
        now = time.perf_counter()
        if not force and now - self.last < 0.5:
            return
        self.last = now
        out = sys.stderr
        if self.lines:
            out.write(f"\x1b[{self.lines}F")
        for op in self.stats.ops:
            wall = now - (op.start or now)
            rate = op.rows / wall if wall > 0 else 0
            blocks = f"{op.tasks}/{op.expected}" if op.expected else f"{op.tasks}"
            out.write(f"\x1b[2K- {op.name}: {blocks} blocks, {op.rows} rows, "
                      f"{_fmt_bytes(op.bytes)}, {rate:,.0f} rows/s\n")
        self.lines = len(self.stats.ops)
        out.flush()


# ---------------------------------------------------------------------------------- stages

class _Stage:
    """One fused operator on the driver: inputs come from upstream (or read tasks), up to
    max_inflight tasks run, outputs wait (in order) for downstream."""

    def __init__(self, name: str, chain: list[MapSpec], stats: OpStats, limits: tuple,
                 reads: list[PlannedRead] | None = None, upstream: _Stage | None = None,
                 bundles: list | None = None, preserve_order: bool = True):
        self.name = name
        self.chain = chain
        self.stats = stats
        self.max_inflight, self.budget = limits
        self.pending: deque = deque(reads or bundles or [])
        if reads or bundles:
            stats.expected = len(self.pending)
        self.upstream = upstream
        self.inflight: dict[int, tuple[int, Any, Any]] = {}  # meta ref id -> (seq, block, meta)
        self.done: dict[int, Bundle] = {}
        self.seq = 0
        self.next_out = 0
        self.rows_in = 0
        self.outputs: deque[Bundle] = deque()
        self.out_bytes = 0
        self.avg_bytes = 0.0
        self.preserve_order = preserve_order
        self.stopped = False
        self.chain_ref = None
        self.first_wave = max(1, job_cpus())
        self.min_rows = chain[0].min_rows if chain and not reads else None

    def held_bytes(self) -> float:
        return self.out_bytes + len(self.inflight) * self.avg_bytes

    def input_exhausted(self) -> bool:
        return not self.pending and (self.upstream is None or self.upstream.finished())

    def finished(self) -> bool:
        return self.stopped or (self.input_exhausted() and not self.inflight and not self.done
                                and not self.outputs)

    def _pop(self) -> Any | None:
        if self.pending:
            return self.pending.popleft()
        if self.upstream is not None and self.upstream.outputs:
            return self.upstream.take()
        return None

    def next_input(self) -> Any | None:
        """A read task, or the input bundles of one task: enough for min_rows."""
        item = self._pop()
        if isinstance(item, PlannedRead) or not self.min_rows or item is None:
            return item
        items = [item]
        rows = item[1]["rows"]
        while rows < self.min_rows and self._any_queued():
            nxt = self._pop()
            items.append(nxt)
            rows += nxt[1]["rows"]
        return items

    def _any_queued(self) -> bool:
        return bool(self.pending) or (self.upstream is not None and bool(self.upstream.outputs))

    def _upstream_done(self) -> bool:
        up = self.upstream
        return up is None or up.stopped or (up.input_exhausted() and not up.inflight
                                            and not up.done)

    def has_input(self) -> bool:
        if not self._any_queued():
            return False
        if not self.min_rows or (self.pending and isinstance(self.pending[0], PlannedRead)):
            return True
        rows = sum(m["rows"] for _, m in self.pending)
        rows += sum(m["rows"] for _, m in self.upstream.outputs) if self.upstream else 0
        return rows >= self.min_rows or self._upstream_done()

    def can_submit(self) -> bool:
        if self.stopped or not self.has_input() or len(self.inflight) >= self.max_inflight:
            return False
        if not self.inflight and not self.outputs:
            return True
        if self.stats.tasks == 0:  # block sizes unknown until the first task ends
            return len(self.inflight) < self.first_wave and self._next_size() < self.budget
        return self.held_bytes() + self.avg_bytes <= self.budget

    def _next_size(self) -> float:
        item = self.pending[0] if self.pending else None
        size = item.nbytes if isinstance(item, PlannedRead) and item.nbytes else 0
        return (len(self.inflight) + 1) * size

    def take(self) -> Bundle:
        bundle = self.outputs.popleft()
        self.out_bytes -= bundle[1]["bytes"]
        return bundle

    def submit(self) -> None:
        item = self.next_input()
        seq = self.seq
        self.seq += 1
        if self.stats.start is None:
            self.stats.start = time.perf_counter()
        if isinstance(item, PlannedRead):
            desc = item.desc
            srcs = [item]
        else:
            items = item if isinstance(item, list) else [item]
            rows = sum(m["rows"] for _, m in items)
            desc = f"block {seq} (rows {self.rows_in}-{self.rows_in + rows} of its input)"
            self.rows_in += rows
            srcs = [ref for ref, _ in items]
        block_ref, meta_ref = self.launch(srcs, desc)
        self.inflight[meta_ref.id] = (seq, block_ref, meta_ref)

    def launch(self, srcs: list, desc: str) -> tuple[Any, Any]:
        if self.chain_ref is None:
            self.chain_ref = hpcray.put(self.chain)
        cpus = max((s.num_cpus for s in self.chain if s.num_cpus is not None), default=1)
        gpus = max((s.num_gpus for s in self.chain if s.num_gpus is not None), default=0)
        retries = [s.max_retries for s in self.chain]
        opts = {"num_returns": 2, "num_cpus": cpus, "name": self.name,
                "max_retries": -1 if -1 in retries else max(retries, default=3)}
        if gpus:
            opts["num_gpus"] = gpus
        return remote(run_task, **opts).remote(self.chain_ref, self.name, desc,
                                               DataContext.get_current().read_max_retries,
                                               *srcs)

    def complete(self, meta_id: int, meta: dict) -> None:
        seq, block_ref, _ = self.inflight.pop(meta_id)
        st = self.stats
        st.tasks += 1
        st.rows += meta["rows"]
        st.bytes += meta["bytes"]
        st.task_wall += meta["wall"]
        st.end = time.perf_counter()
        self.avg_bytes += (meta["bytes"] - self.avg_bytes) / st.tasks
        self.done[seq] = (block_ref, meta)
        if self.preserve_order:
            while self.next_out in self.done:
                self._out(self.done.pop(self.next_out))
                self.next_out += 1
        else:
            for k in list(self.done):
                self._out(self.done.pop(k))

    def _out(self, bundle: Bundle) -> None:
        self.outputs.append(bundle)
        self.out_bytes += bundle[1]["bytes"]

    def close(self) -> None:
        pass


class PoolSizer:
    """When a map_batches actor pool of (low, high) actors grows and which actors it lets go.

    It grows by one while input waits and every actor has two calls queued. An actor with
    nothing to do goes (down to low) when no input waits: at once if the input is exhausted,
    else once it has been idle idle_timeout seconds (so a brief gap upstream keeps it)."""

    def __init__(self, low: int, high: int, idle_timeout: float):
        self.low, self.high, self.idle_timeout = low, high, idle_timeout

    def grow(self, loads: list[int], input_waiting: bool) -> bool:
        return len(loads) < self.high and input_waiting and all(n >= 2 for n in loads)

    def release(self, loads: dict[int, int], idle_since: dict[int, float], input_waiting: bool,
                exhausted: bool, now: float) -> list[int]:
        if input_waiting:
            return []
        idle = sorted((idle_since[i], i) for i, n in loads.items() if n == 0)
        ready = [i for since, i in idle if exhausted or now - since >= self.idle_timeout]
        return ready[:max(0, len(loads) - self.low)]


class _ActorStage(_Stage):
    """A map_batches stage on a pool of actors, each building the user's class once."""

    def __init__(self, *args, pool_size: tuple[int, int, int], **kwargs):
        super().__init__(*args, **kwargs)
        ctx = DataContext.get_current()
        retry = ctx.actor_task_retry_on_errors
        if retry:
            retry = True if retry is True else tuple(retry)
            self.chain = [s if s.retry_exceptions else dataclasses.replace(
                s, retry_exceptions=retry) for s in self.chain]
        spec = self.chain[0]
        # without num_cpus an actor holds no CPU while alive, so reads upstream still run
        opts = {"num_cpus": spec.num_cpus} if spec.num_cpus is not None else {}
        if spec.num_gpus:
            opts["num_gpus"] = spec.num_gpus
        self.worker = remote(MapWorker, **opts)
        self.actors: dict[int, Any] = {}
        self.load: dict[int, int] = {}
        self.idle_since: dict[int, float] = {}
        self.owner: dict[int, int] = {}
        self.next_id = 0
        low, high, initial = pool_size
        self.sizer = PoolSizer(low, high, ctx.actor_pool_idle_timeout_s)
        self.task_cap = self.max_inflight
        for _ in range(initial):
            self._grow()
        self.stats.pool[:] = [len(self.actors)]

    def _resized(self) -> None:
        self.max_inflight = min(self.task_cap, 2 * len(self.actors))
        self.stats.pool.append(len(self.actors))

    def _grow(self) -> None:
        i = self.next_id
        self.next_id += 1
        self.actors[i] = self.worker.remote(self.chain)
        self.load[i] = 0
        self.idle_since[i] = time.perf_counter()
        self._resized()

    def _shrink(self) -> None:
        gone = self.sizer.release(self.load, self.idle_since, self.has_input(),
                                  self.input_exhausted(), time.perf_counter())
        for i in gone:
            actor = self.actors.pop(i)
            del self.load[i], self.idle_since[i]
            with contextlib.suppress(Exception):  # already gone
                hpcray.kill(actor)
        if gone:
            self._resized()

    def can_submit(self) -> bool:
        if self.sizer.grow(list(self.load.values()), self.has_input()):
            self._grow()
        else:
            self._shrink()
        return super().can_submit()

    def launch(self, srcs: list, desc: str) -> tuple[Any, Any]:
        i = min(self.load, key=self.load.get)
        self.load[i] += 1
        block_ref, meta_ref = self.actors[i].run.options(num_returns=2).remote(desc, *srcs)
        self.owner[meta_ref.id] = i
        return block_ref, meta_ref

    def complete(self, meta_id: int, meta: dict) -> None:
        i = self.owner.pop(meta_id)
        self.load[i] -= 1
        if not self.load[i]:
            self.idle_since[i] = time.perf_counter()
        super().complete(meta_id, meta)

    def close(self) -> None:
        for a in self.actors.values():
            with contextlib.suppress(Exception):  # already gone
                hpcray.kill(a)
        self.actors = {}


class _LimitStage(_Stage):
    """Passes bundles through until n rows; cuts the last one; stops everything upstream."""

    def __init__(self, *args, n: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.left = n

    def can_submit(self) -> bool:
        return not self.stopped and self.has_input() and not self.inflight

    def submit(self) -> None:
        ref, meta = self.next_input()
        if self.stats.start is None:
            self.stats.start = time.perf_counter()
        if meta["rows"] <= self.left:
            self.left -= meta["rows"]
            self._out((ref, meta))
            self.stats.rows += meta["rows"]
            self.stats.bytes += meta["bytes"]
            self.stats.tasks += 1
        else:
            block_ref, meta_ref = remote(slice_task, num_returns=2).remote(ref, 0, self.left)
            self.inflight[meta_ref.id] = (self.seq, block_ref, meta_ref)
            self.next_out = self.seq
            self.left = 0
        self.seq += 1
        if self.left == 0:
            self._stop_upstream()

    def _stop_upstream(self) -> None:
        up = self.upstream
        while up is not None:
            up.stopped = True
            up.pending.clear()
            up.inflight.clear()
            up.done.clear()
            up.outputs.clear()
            up = up.upstream

    def finished(self) -> bool:
        return (self.left == 0 or self.input_exhausted()) and not self.inflight and \
            not self.outputs and not self.done


# ---------------------------------------------------------------------------------- executor

def _limits(ctx: DataContext) -> tuple[int, float]:
    cpus = job_cpus()
    inflight = ctx.max_tasks_in_flight_per_op or max(2, 2 * cpus)
    limit = ctx.execution_options.resource_limits.object_store_memory
    budget = limit if limit else job_memory() * ctx.memory_fraction_per_op
    return inflight, budget


def pool_size(spec: MapSpec) -> tuple[int, int, int]:
    """(fewest, most, first) actors of a map_batches pool."""
    c = spec.concurrency
    if c is None:
        n = job_cpus()
        return n, n, n
    if isinstance(c, tuple):
        low, high = max(1, int(c[0])), max(1, int(c[1]))
        return low, high, int(c[2]) if len(c) > 2 else low
    return int(c), int(c), int(c)


def execute(plan: Plan, stats: DatasetStats | None = None) -> Iterator[Bundle]:
    """Runs the plan; yields (block ref, metadata) in order as blocks are made."""
    stats = stats if stats is not None else DatasetStats()
    source = plan.source
    run: list = []
    for op in plan.ops:
        if isinstance(op, AllToAll):
            bundles = list(_stream(source, run, plan.num_blocks, stats))
            st = stats.add(op.name)
            st.start = time.perf_counter()
            source = op.fn(bundles)
            st.end = time.perf_counter()
            st.tasks = len(source)
            st.rows = sum(m["rows"] for _, m in source)
            st.bytes = sum(m["bytes"] for _, m in source)
            run = []
        else:
            run.append(op)
    yield from _stream(source, run, plan.num_blocks, stats)
    stats.end = time.perf_counter()


def _fuses(op: Any, chain: list[MapSpec]) -> bool:
    """Whether op runs in the same task as chain: task maps do, but one with a batch_size
    starts a stage of its own (which bundles small blocks) unless it comes first."""
    return isinstance(op, MapSpec) and op.compute == "tasks" and not (op.min_rows and chain)


def _stream(source: Source | list, ops: list, num_blocks: int | None,
            stats: DatasetStats) -> Iterator[Bundle]:
    ctx = DataContext.get_current()
    limits = _limits(ctx)
    order = ctx.execution_options.preserve_order
    stages: list[_Stage] = []
    i = 0
    if isinstance(source, Source):
        chain = []
        while i < len(ops) and _fuses(ops[i], chain):
            chain.append(ops[i])
            i += 1
        name = "->".join([source.name, *(s.name for s in chain)])
        stages.append(_Stage(name, chain, stats.add(name), limits,
                             reads=source.plan(num_blocks), preserve_order=order))
    else:
        bundles = list(source)
        chain = []
        while i < len(ops) and _fuses(ops[i], chain):
            chain.append(ops[i])
            i += 1
        if chain:
            name = "->".join(s.name for s in chain)
            stages.append(_Stage(name, chain, stats.add(name), limits, bundles=bundles,
                                 preserve_order=order))
        else:
            stages.append(_Passthrough(bundles))
    while i < len(ops):
        op = ops[i]
        up = stages[-1]
        if isinstance(op, Limit):
            stages.append(_LimitStage(op.name, [], stats.add(op.name), limits, upstream=up,
                                      n=op.n))
            i += 1
            continue
        chain = [op]
        i += 1
        while i < len(ops) and _fuses(ops[i], chain):
            chain.append(ops[i])
            i += 1
        name = "->".join(s.name for s in chain)
        if op.compute == "actors":
            stages.append(_ActorStage(name, chain, stats.add(name), limits, upstream=up,
                                      preserve_order=order, pool_size=pool_size(op)))
        else:
            stages.append(_Stage(name, chain, stats.add(name), limits, upstream=up,
                                 preserve_order=order))
    progress = _Progress(stats)
    last = stages[-1]
    try:
        while True:
            for st in reversed(stages):
                while st.can_submit():
                    st.submit()
            while last.outputs:
                yield last.take()
            if last.finished():
                break
            waiting = [(st, e[2]) for st in stages for e in st.inflight.values()]
            if not waiting:
                if any(st.can_submit() for st in stages):
                    continue
                raise RuntimeError("hpcray.data executor stalled: no task running and none can "
                                   "start; please report this with the dataset's plan")
            refs = [r for _, r in waiting]
            ready, _ = hpcray.wait(refs, num_returns=1, timeout=None)
            if len(refs) > 1:
                more, _ = hpcray.wait(refs, num_returns=len(refs), timeout=0)
                ready = list({r.id: r for r in [*ready, *more]}.values())
            owner = {r.id: st for st, r in waiting}
            metas = hpcray.get(ready)
            for ref, meta in zip(ready, metas):
                owner[ref.id].complete(ref.id, meta)
            progress.update()
    finally:
        progress.update(force=True)
        for st in stages:
            st.close()


class _Passthrough(_Stage):
    """Already-made blocks as a stage's outputs."""

    def __init__(self, bundles: list):
        self.pending = deque()
        self.upstream = None
        self.inflight = {}
        self.done = {}
        self.outputs = deque(bundles)
        self.out_bytes = sum(m["bytes"] for _, m in bundles)
        self.stopped = False

    def can_submit(self) -> bool:
        return False

    def finished(self) -> bool:
        return self.stopped or not self.outputs
