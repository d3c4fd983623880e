"""Trainer settings with Ray Train's names: ScalingConfig, RunConfig, CheckpointConfig,
FailureConfig."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class ScalingConfig:
    """How many workers, and what each one reserves (gang-scheduled in a placement group)."""

    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict | None = None
    placement_strategy: str = "PACK"

    def __post_init__(self):
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(f"num_workers must be a positive int, got {self.num_workers!r}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(f"placement_strategy must be one of {PLACEMENT_STRATEGIES}, got "
                             f"{self.placement_strategy!r}")

    def bundle(self) -> dict[str, float]:
        """One worker's reservation: resources_per_worker, else 1 CPU (and 1 GPU with use_gpu)."""
        bundle = dict(self.resources_per_worker or {"CPU": 1})
        if self.use_gpu:
            bundle.setdefault("GPU", 1)
        if any(not isinstance(v, (int, float)) or v < 0 for v in bundle.values()):
            raise ValueError(f"resources_per_worker must map names to numbers >= 0, got {bundle}")
        return {k: float(v) for k, v in bundle.items() if v > 0}


@dataclass
class CheckpointConfig:
    """Which checkpoints stay on disk: the num_to_keep best by checkpoint_score_attribute
    (highest with order "max"), else the most recent. The latest is always kept too, for
    resuming after a failure."""

    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: str = "max"

    def __post_init__(self):
        if self.num_to_keep is not None and (not isinstance(self.num_to_keep, int)
                                             or self.num_to_keep < 1):
            raise ValueError(f"num_to_keep must be None or a positive int, got {self.num_to_keep!r}")
        if self.checkpoint_score_order not in ("max", "min"):
            raise ValueError("checkpoint_score_order must be 'max' or 'min', got "
                             f"{self.checkpoint_score_order!r}")


@dataclass
class FailureConfig:
    """How many times a failed run restarts from its latest checkpoint (-1: without end)."""

    max_failures: int = 0


class UserCallback:
    """Hooks into a trainer's fit() on the driver (Ray Train's ``UserCallback``): subclass it
    and pass instances in ``RunConfig(callbacks=[...])``."""

    def after_report(self, metrics: dict[str, Any], checkpoint: Checkpoint | None) -> None:
        """After each report every worker made: rank 0's metrics and the checkpoint it
        published (None without one). An exception here ends fit() with it."""


@dataclass
class RunConfig:
    """Where results go (storage_path/name), how failures and checkpoints are handled, and
    the callbacks that see every report."""

    name: str | None = None
    storage_path: str | None = None
    checkpoint_config: CheckpointConfig = field(default_factory=CheckpointConfig)
    failure_config: FailureConfig = field(default_factory=FailureConfig)
    #: 0: quiet; 1: one line on the driver per report
    verbose: int = 1
    callbacks: list[UserCallback] = field(default_factory=list)
