"""DataContext: the execution settings of hpcray.data (Ray Data's names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .datasource import DEFAULT_READ_BLOCK_BYTES


@dataclass
class ExecutionResources:
    """Limits for one execution: CPUs used by data tasks and bytes of blocks in flight."""

    cpu: float | None = None
    gpu: float | None = None
    object_store_memory: float | None = None


@dataclass
class ExecutionOptions:
    resource_limits: ExecutionResources = field(default_factory=ExecutionResources)
    preserve_order: bool = True
    verbose_progress: bool = False


@dataclass
class DataContext:
    """Settings read when a dataset executes; change them on ``DataContext.get_current()``."""

    read_block_size: int = DEFAULT_READ_BLOCK_BYTES  # what reads aim at, without override
    execution_options: ExecutionOptions = field(default_factory=ExecutionOptions)
    enable_progress_bars: bool = True
    # in-flight tasks per operator; None: twice the job's CPUs
    max_tasks_in_flight_per_op: int | None = None
    # bytes of blocks an operator may hold (queued outputs + running tasks' estimate) when
    # resource_limits.object_store_memory is not set: this share of the job's memory
    memory_fraction_per_op: float = 0.1
    read_max_retries: int = 3
    # a callable class's calls on an actor pool run again when the class raises: True for
    # any exception, or a list of exception types (Ray's name)
    actor_task_retry_on_errors: bool | list = False
    # an actor of a map_batches pool above its min size that has had nothing to do this long
    # (and no input waits) is let go; once the input is exhausted idle actors go at once
    actor_pool_idle_timeout_s: float = 5.0
    min_num_blocks: int | None = None  # default: twice the job's CPUs

    _current = None

    @classmethod
    def get_current(cls) -> DataContext:
        if cls._current is None:
            cls._current = DataContext()
        return cls._current
