"""Inside a training worker: report(), get_context(), get_checkpoint(), get_dataset_shard()."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any

from ..exceptions import HpcrayError
from .checkpoint import Checkpoint, stage

# Written into every checkpoint a worker reports: the positions of its dataset shards that
# have one (state_dict()), so a restored run's get_dataset_shard() resumes them
SHARD_STATE_FILE = ".hpcray_dataset_shards.json"


@dataclass
class TrainContext:
    """Where this worker sits in the run (Ray Train's ``get_context()``)."""

    world_rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    experiment_name: str
    trial_dir: str
    attempt: int = 0

    def get_world_rank(self) -> int:
        return self.world_rank

    def get_world_size(self) -> int:
        return self.world_size

    def get_local_rank(self) -> int:
        return self.local_rank

    def get_local_world_size(self) -> int:
        return self.local_world_size

    def get_node_rank(self) -> int:
        return self.node_rank

    def get_experiment_name(self) -> str:
        return self.experiment_name

    def get_trial_dir(self) -> str:
        return self.trial_dir


class Session:
    """One worker's run of the training loop: its context, inputs and reports so far."""

    def __init__(self, context: TrainContext, checkpoint: Checkpoint | None, shards: dict):
        self.context = context
        self.checkpoint = checkpoint
        self.shards = shards
        self.restored: set[str] = set()  # shards given their position from the checkpoint
        self.lock = threading.Lock()
        self.reports: list[tuple[int, dict, bool]] = []  # not yet taken by the driver
        self.count = 0
        self.stopped: str | None = None  # why the trainer stopped this worker

    def report(self, metrics: dict, checkpoint: Checkpoint | None) -> None:
        if self.stopped:
            raise HpcrayError(self.stopped)
        if not isinstance(metrics, dict):
            raise TypeError(f"report() takes a dict of metrics, got {type(metrics).__name__}")
        index = self.count
        self.count += 1
        if checkpoint is not None:
            if not isinstance(checkpoint, Checkpoint):
                raise TypeError("checkpoint must be a hpcray.train.Checkpoint (e.g. "
                                "Checkpoint.from_directory(path))")
            staging = staging_dir(self.context, index)
            stage(checkpoint.path, staging)
            self._save_shard_states(staging)
        with self.lock:
            self.reports.append((index, dict(metrics), checkpoint is not None))

    def _save_shard_states(self, staging: str) -> None:
        states = {}
        for name, shard in self.shards.items():
            if callable(getattr(shard, "state_dict", None)):
                try:
                    states[name] = shard.state_dict()
                except ValueError:  # a shard with no position (streaming_split(equal=False))
                    continue
        if states:  # every worker writes the same positions: replace, never interleave
            tmp = os.path.join(staging, f"{SHARD_STATE_FILE}.{self.context.world_rank}")
            with open(tmp, "w") as f:
                json.dump(states, f)
            os.replace(tmp, os.path.join(staging, SHARD_STATE_FILE))

    def shard(self, name: str) -> Any:
        """The shard, resumed at its position in the checkpoint on first use."""
        if name not in self.shards:
            raise KeyError(f"no dataset named {name!r}; the trainer got {sorted(self.shards)}")
        shard = self.shards[name]
        if name not in self.restored and self.checkpoint is not None:
            self.restored.add(name)
            path = os.path.join(self.checkpoint.path, SHARD_STATE_FILE)
            if os.path.exists(path):
                with open(path) as f:
                    state = json.load(f).get(name)
                if state is not None:
                    shard.load_state_dict(state)
        return shard

    def take(self) -> list[tuple[int, dict, bool]]:
        with self.lock:
            reports, self.reports = self.reports, []
        return reports


def staging_dir(context: TrainContext, index: int) -> str:
    """Where workers gather the files of report ``index`` before the driver publishes them."""
    return os.path.join(context.trial_dir, ".staging", f"attempt{context.attempt}_{index:06d}")


_local = threading.local()
_process: dict[str, Session | None] = {"session": None}


def set_session(session: Session | None) -> None:
    _local.session = session
    _process["session"] = session


def _session(what: str) -> Session:
    session = getattr(_local, "session", None) or _process["session"]
    if session is None:
        raise RuntimeError(f"hpcray.train.{what}() is only available inside a training loop "
                           "run by a trainer's fit()")
    return session


def report(metrics: dict, checkpoint: Checkpoint | None = None) -> None:
    """Reports metrics (and optionally a checkpoint) for this step; every worker should call
    it the same number of times. Rank 0's metrics are the ones recorded."""
    _session("report").report(metrics, checkpoint)


def get_context() -> TrainContext:
    return _session("get_context").context


def get_checkpoint() -> Checkpoint | None:
    """The checkpoint to resume from (the latest one after a restart), or None."""
    return _session("get_checkpoint").checkpoint


def get_dataset_shard(name: str) -> Any:
    """This worker's part of the dataset passed to the trainer as ``datasets[name]``.

    A shard with a position (hpcray.data's) has it saved in every checkpoint this worker
    reports, and a run restored from such a checkpoint gets the shard back at that position:
    mid-epoch, no row repeated or skipped."""
    return _session("get_dataset_shard").shard(name)


def shard(dataset: Any, index: int, count: int) -> Any:
    """Part ``index`` of ``count`` of a dataset: every count-th item of a sequence or array
    (dicts: of each value), or ``dataset.shard(count, index)`` when it has such a method."""
    if hasattr(dataset, "shard") and callable(dataset.shard):
        return dataset.shard(count, index)
    if isinstance(dataset, dict):
        return {k: shard(v, index, count) for k, v in dataset.items()}
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        return dataset[index::count]
    raise TypeError(f"cannot split a {type(dataset).__name__} between workers: pass a sequence, "
                    "an array, a dict of them, or an object with a shard(count, index) method")
