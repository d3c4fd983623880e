"""DataParallelTrainer: one training loop per worker actor, gang-scheduled, with checkpoints,
metrics files and restarts after failures."""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .. import api
from ..actor import ActorClass
from ..exceptions import HpcrayError
from ..util import PlacementGroupSchedulingStrategy, placement_group, remove_placement_group
from .checkpoint import Checkpoint, CheckpointManager, clean_staging
from .config import RunConfig, ScalingConfig
from .session import Session, TrainContext, set_session, shard, staging_dir


class TrainingFailedError(HpcrayError):
    """The run failed more often than FailureConfig allows; ``result`` has what it got to."""

    def __init__(self, message: str, result: Result | None = None):
        super().__init__(message)
        self.result = result

    def __reduce__(self):
        return (TrainingFailedError, (str(self), self.result))


@dataclass
class Result:
    """What fit() returns: the last metrics, the latest checkpoint and where files are."""

    metrics: dict | None
    checkpoint: Checkpoint | None
    path: str
    error: BaseException | None = None
    metrics_dataframe: Any = None
    best_checkpoints: list = field(default_factory=list)

    @property
    def config(self) -> dict | None:
        return (self.metrics or {}).get("config")


# -- the workers' side ------------------------------------------------------------------------
class Backend:
    """What a trainer sets up in each worker around its loop (picklable; runs on workers)."""

    def for_attempt(self, run_dir: str, attempt: int) -> Backend:
        return self

    def on_start(self, context: TrainContext) -> None:
        """Before the loop."""

    def on_shutdown(self) -> None:
        """After the loop, also when it raised."""

    def abort(self) -> None:
        """From another thread, when another worker failed: unblock this worker's loop."""


class CollectiveBackend(Backend):
    """The workers form the hpcray.collective group "default" (backend "mpi"), in a scope of
    their own: trainers running at once (a Tune sweep's trials) never meet each other."""

    group_name = "default"

    def __init__(self, scope: str = ""):
        self.scope = scope

    def for_attempt(self, run_dir: str, attempt: int) -> CollectiveBackend:
        return type(self)(uuid.uuid4().hex)

    def on_start(self, context: TrainContext) -> None:
        from .. import collective

        collective.init_collective_group(context.world_size, context.world_rank,
                                         group_name=self.group_name, scope=self.scope)

    def on_shutdown(self) -> None:
        from .. import collective

        if collective.is_group_initialized(self.group_name):
            collective.destroy_collective_group(self.group_name)

    def abort(self) -> None:
        from .. import collective

        collective.abort_collective_group(self.group_name, STOPPED)


STOPPED = "the trainer stopped this worker (another worker failed, or fit() was ended)"


class _TrainWorker:
    """One worker: runs the loop in one thread; the driver polls reports from another."""

    def __init__(self):
        self.session: Session | None = None
        self.backend: Backend | None = None
        self.stopped = False

    def where(self) -> tuple[str, int, str]:
        ctx = api.get_runtime_context()
        return ctx.get_node_id(), ctx.get_rank(), ctx.get_host()

    def run(self, loop: Callable, config: dict | None, context: TrainContext,
            checkpoint: Checkpoint | None, shards: dict, backend: Backend) -> int:
        if self.stopped:  # abort() came first
            return 0
        self.session = Session(context, checkpoint, shards)
        self.backend = backend
        set_session(self.session)
        try:
            backend.on_start(context)
            if self.stopped:  # during on_start: what it set up may have missed the abort
                self.abort()
            if _takes_config(loop):
                loop(config if config is not None else {})
            else:
                loop()
        finally:
            try:
                backend.on_shutdown()
            finally:
                set_session(None)
        return self.session.count

    def poll(self) -> list:
        return self.session.take() if self.session is not None else []

    def stop(self) -> None:
        """Ends the loop at its next report (it must not outlive the trainer)."""
        self.stopped = True
        if self.session is not None:
            self.session.stopped = STOPPED

    def abort(self) -> None:
        """Ends the loop at its next report, or now if it waits in a collective."""
        self.stop()
        if self.backend is not None:
            self.backend.abort()


_Worker = ActorClass(_TrainWorker, {"max_concurrency": 2})


def _takes_config(loop: Callable) -> bool:
    try:
        return len(inspect.signature(loop).parameters) > 0
    except (TypeError, ValueError):
        return True


# -- the driver's side ------------------------------------------------------------------------
class MetricsLog:
    """Reported metrics as JSON lines (result.json) and CSV (progress.csv) in the run dir."""

    def __init__(self, run_dir: str):
        self.rows: list[dict] = []
        self.json_path = os.path.join(run_dir, "result.json")
        self.csv_path = os.path.join(run_dir, "progress.csv")
        self.columns: list[str] = []
        for path in (self.json_path, self.csv_path):
            if os.path.exists(path):
                os.remove(path)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.json_path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        new = [k for k in row if k not in self.columns]
        self.columns += new
        if new:  # rewrite with the wider header
            with open(self.csv_path, "w", newline="") as f:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(self.rows)
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def dataframe(self) -> Any:
        """A pandas DataFrame when pandas is installed, else the list of row dicts."""
        try:
            import pandas
        except ImportError:
            return list(self.rows)
        return pandas.DataFrame(self.rows, columns=self.columns or None)


@dataclass
class _Failure:
    rank: int
    error: BaseException

    def describe(self) -> str:
        text = str(self.error).strip().splitlines()
        where = getattr(self.error, "rank", None)
        on = f" (MPI rank {where} on {self.error.host})" if isinstance(where, int) and where >= 0 \
            else ""
        return f"worker {self.rank}{on} failed: {type(self.error).__name__}: " + \
            (text[-1] if text else "")


class DataParallelTrainer:
    """Runs ``train_loop_per_worker(config)`` on ``scaling_config.num_workers`` actors.

    The workers form the hpcray.collective group "default" for the loop's own collectives.
    """

    _backend: Backend = CollectiveBackend()

    def __init__(self, train_loop_per_worker: Callable, *, train_loop_config: dict | None = None,
                 scaling_config: ScalingConfig | None = None, run_config: RunConfig | None = None,
                 datasets: dict | None = None, resume_from_checkpoint: Checkpoint | None = None,
                 backend: Backend | None = None):
        if not callable(train_loop_per_worker):
            raise TypeError("train_loop_per_worker must be a function")
        self.loop = train_loop_per_worker
        self.config = train_loop_config
        self.scaling = scaling_config or ScalingConfig()
        self.run_config = run_config or RunConfig()
        self.datasets = dict(datasets or {})
        self.resume_from_checkpoint = resume_from_checkpoint
        self.backend = backend or self._backend
        self.poll_interval = (0.05, 1.0)  # seconds between polls of the workers: from, up to
        self.placement_timeout = 60.0

    # -- fit -------------------------------------------------------------------------------
    def fit(self) -> Result:
        """Trains; restarts from the latest checkpoint after a failure, up to max_failures.

        Raises TrainingFailedError naming the worker that failed when restarts run out."""
        rc = self.run_config
        name = rc.name or f"{type(self).__name__}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        storage = rc.storage_path or os.path.join(os.path.expanduser("~"), "hpcray_results")
        run_dir = os.path.abspath(os.path.join(storage, name))
        os.makedirs(run_dir, exist_ok=True)
        clean_staging(run_dir)
        self._name = name
        self._manager = CheckpointManager(run_dir, rc.checkpoint_config)
        self._log = MetricsLog(run_dir)
        self._start = time.time()
        self._metrics: dict | None = None
        max_failures = rc.failure_config.max_failures
        failures = 0
        attempt = 0
        while True:
            failure = self._attempt(run_dir, attempt)
            if failure is None:
                return self._result(run_dir, None)
            failures += 1
            if 0 <= max_failures < failures:
                error = TrainingFailedError(
                    f"training run {name!r} failed: {failure.describe()} (failure {failures}; "
                    f"FailureConfig(max_failures={max_failures}))")
                error.__cause__ = failure.error
                error.result = self._result(run_dir, error)
                raise error
            latest = self._manager.latest or self.resume_from_checkpoint
            self._say(f"{failure.describe()}; restarting from "
                      f"{latest.path if latest else 'the beginning'} (failure {failures} of "
                      f"{'unlimited' if max_failures < 0 else max_failures} allowed)")
            attempt += 1

    def _result(self, run_dir: str, error: BaseException | None) -> Result:
        return Result(metrics=self._metrics, checkpoint=self._manager.latest, path=run_dir,
                      error=error, metrics_dataframe=self._log.dataframe(),
                      best_checkpoints=self._manager.best())

    def _say(self, text: str) -> None:
        if self.run_config.verbose:
            print(f"[{self._name}] {text}", flush=True)

    def _attempt(self, run_dir: str, attempt: int) -> _Failure | None:
        n = self.scaling.num_workers
        bundle = self.scaling.bundle()
        total = api.cluster_resources()
        short = sorted(k for k, v in bundle.items() if v * n > total.get(k, 0))
        if short:
            raise TrainingFailedError(
                f"{n} workers of {bundle} need {', '.join(f'{bundle[k] * n:g} {k}' for k in short)}"
                f"; the whole job has {', '.join(f'{total.get(k, 0):g} {k}' for k in short)}. "
                "Start the job with more ranks or lower num_workers / resources_per_worker")
        pg = placement_group([dict(bundle) for _ in range(n)], self.scaling.placement_strategy)
        if not pg.wait(self.placement_timeout):
            remove_placement_group(pg)
            raise TrainingFailedError(
                f"could not reserve {n} workers of {bundle} ({self.scaling.placement_strategy}) "
                f"within {self.placement_timeout:g} s; available: {api.available_resources()}")
        # in_rank: the workers join a collective group, which runs on their ranks' MPI
        options = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0),
                   "in_rank": True,
                   "resources": {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}}
        workers = [_Worker.options(**options, scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, i)).remote() for i in range(n)]
        runs: list = []
        try:
            where = api.get([w.where.remote() for w in workers])
            contexts = _contexts(where, self._name, run_dir, attempt)
            checkpoint = self._manager.latest or self.resume_from_checkpoint
            backend = self.backend.for_attempt(run_dir, attempt)
            for i, w in enumerate(workers):
                shards = {k: shard(v, i, n) for k, v in self.datasets.items()}
                runs.append(w.run.remote(self.loop, self.config, contexts[i], checkpoint, shards,
                                         backend))
            return self._follow(workers, runs, contexts)
        except BaseException:  # fit() ended from outside (a callback raised; Tune stopped it)
            self._end(workers, runs)
            raise
        finally:
            for w in workers:
                api.kill(w)
            remove_placement_group(pg)

    def _follow(self, workers: list, runs: list, contexts: list) -> _Failure | None:
        """Publishes each report once every running worker made it; stops at a failure."""
        n = len(workers)
        pending = {ref: rank for rank, ref in enumerate(runs)}
        reports: list[dict] = [{} for _ in range(n)]
        finished: set[int] = set()
        failure: _Failure | None = None
        index = 0
        interval = self.poll_interval[0]  # doubles while nothing new arrives: polls cost the
        while True:                       # workers' CPU
            if pending:
                done, _ = api.wait(list(pending), num_returns=len(pending), timeout=interval)
                for ref in done:
                    rank = pending.pop(ref)
                    try:
                        api.get(ref)
                        finished.add(rank)
                    except Exception as exc:  # noqa: BLE001 - a worker's failure is recorded
                        failure = failure or _Failure(rank, exc)
            interval = min(interval * 2, self.poll_interval[1])
            for rank, w in enumerate(workers):
                try:
                    for i, metrics, has_checkpoint in api.get(w.poll.remote()):
                        reports[rank][i] = (metrics, has_checkpoint)
                        interval = self.poll_interval[0]
                except Exception as exc:  # noqa: BLE001 - a dead worker is a failure
                    failure = failure or _Failure(rank, exc)
            while True:
                waiting = [r for r in range(n) if r not in finished and index not in reports[r]]
                have = [r for r in range(n) if index in reports[r]]
                if waiting or not have:
                    break
                self._publish(index, [reports[r].pop(index) for r in have], have, contexts[0])
                index += 1
            if failure is not None:
                self._end(workers, list(pending))
                return failure
            if not pending:
                return None

    def _end(self, workers: list, runs: list) -> None:
        """Ends the loops still running before their workers are killed (a loop left running
        would use MPI until the job ends): each at its next report; then a loop still waiting
        in a collective for a worker that left is aborted. (Aborting first could abandon a
        collective the others still take part in, and MPI then writes into freed memory.)"""
        for w in workers:
            w.stop.remote()
        if not runs:
            return
        _, left = api.wait(runs, num_returns=len(runs), timeout=2)
        if left:
            for w in workers:
                w.abort.remote()
            api.wait(left, num_returns=len(left), timeout=10)

    def _publish(self, index: int, parts: list, ranks: list[int], context: TrainContext) -> None:
        metrics = dict(parts[0][0])  # the lowest reporting rank's metrics (rank 0's normally)
        checkpoint = None
        if any(has for _, has in parts):
            checkpoint = self._manager.publish(staging_dir(context, index), metrics)
        iteration = len(self._log.rows) + 1
        row = {**metrics, "training_iteration": iteration, "timestamp": int(time.time()),
               "time_total_s": round(time.time() - self._start, 3), "attempt": context.attempt,
               "checkpoint_dir_name": os.path.basename(checkpoint.path) if checkpoint else None}
        self._log.add(row)
        self._metrics = row
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        self._say(f"iteration {iteration}: {shown}"
                  + (f" [{os.path.basename(checkpoint.path)}]" if checkpoint else ""))
        for callback in self.run_config.callbacks:
            callback.after_report(dict(metrics), checkpoint)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


def _contexts(where: list[tuple], name: str, run_dir: str, attempt: int) -> list[TrainContext]:
    """World, local and node ranks from where each worker landed (node id, MPI rank, host)."""
    nodes: list[str] = []
    for node, _, _ in where:
        if node not in nodes:
            nodes.append(node)
    per_node: dict[str, list[int]] = {}
    for i, (node, _, _) in enumerate(where):
        per_node.setdefault(node, []).append(i)
    base = TrainContext(0, len(where), 0, 1, 0, name, run_dir, attempt)
    return [replace(base, world_rank=i, local_rank=per_node[node].index(i),
                    local_world_size=len(per_node[node]), node_rank=nodes.index(node))
            for i, (node, _, _) in enumerate(where)]
