"""A trial's record on the driver: config, state, results and checkpoint. Pure data, no MPI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PENDING = "PENDING"
RUNNING = "RUNNING"
PAUSED = "PAUSED"
TERMINATED = "TERMINATED"
ERROR = "ERROR"
STATES = (PENDING, RUNNING, PAUSED, TERMINATED, ERROR)


@dataclass
class Trial:
    """One config being trained. ``checkpoint`` is the path of its latest checkpoint directory."""

    trial_id: str
    config: dict
    index: int = 0
    status: str = PENDING
    last_result: dict = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoints: list = field(default_factory=list)
    iteration: int = 0
    time_total_s: float = 0.0
    num_failures: int = 0
    error: str | None = None
    local_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_finished(self) -> bool:
        return self.status in (TERMINATED, ERROR)

    def state(self) -> dict:
        """What experiment_state.json keeps of this trial."""
        keys = ("trial_id", "config", "index", "status", "last_result", "checkpoint",
                "checkpoints", "iteration", "time_total_s", "num_failures", "error", "local_path")
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_state(cls, state: dict) -> Trial:
        return cls(**state)

    def __repr__(self) -> str:
        return f"Trial({self.trial_id}, {self.status})"
