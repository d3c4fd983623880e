"""Tuner settings, with Ray's names: TuneConfig, RunConfig, CheckpointConfig, FailureConfig."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class CheckpointConfig:
    """num_to_keep: latest checkpoints kept per trial (None: all); checkpoint_frequency and
    checkpoint_at_end: when class trainables are checkpointed."""

    num_to_keep: int | None = None
    checkpoint_frequency: int = 0
    checkpoint_at_end: bool | None = None


@dataclass
class FailureConfig:
    """max_failures: retries of a trial that raised (-1: forever); fail_fast: end the whole
    experiment at the first trial error."""

    max_failures: int = 0
    fail_fast: bool = False


@dataclass
class RunConfig:
    """name and storage_path: where the experiment directory goes; stop: a dict of
    {metric: threshold} (stop when reached) or a callable(trial_id, result) -> bool;
    verbose: 0 quiet, 1 live table on a terminal and a summary, 2 the table even when not a
    terminal."""

    name: str | None = None
    storage_path: str | None = None
    stop: dict | Callable[[str, dict], bool] | None = None
    checkpoint_config: CheckpointConfig | None = None
    failure_config: FailureConfig | None = None
    verbose: int = 1
    progress_interval_s: float = 1.0


@dataclass
class TuneConfig:
    """What to optimise and how: metric/mode for best results, schedulers and searchers;
    num_samples repeats the param space (every grid combination each time)."""

    metric: str | None = None
    mode: str | None = None
    search_alg: Any = None
    scheduler: Any = None
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    time_budget_s: float | None = None
    reuse_actors: bool = True
    trial_dirname_creator: Callable[[Any], str] | None = None

    def __post_init__(self):
        if self.mode not in (None, "min", "max"):
            raise ValueError(f"TuneConfig(mode=...) must be 'min' or 'max', got {self.mode!r}")
        if not isinstance(self.num_samples, int) or self.num_samples < 1 and self.num_samples != -1:
            raise ValueError(f"num_samples must be a positive int, got {self.num_samples!r}")
