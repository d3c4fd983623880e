"""The one holder of this process's runtime: the head on rank 0, the worker elsewhere."""

from __future__ import annotations

from typing import Any

_current: Any = None


def set_current(runtime: Any) -> None:
    """Set by the job's start-up (and cleared by shutdown)."""
    global _current
    _current = runtime


def current() -> Any:
    """The running HeadRuntime or WorkerRuntime, or None before init()/after shutdown()."""
    return _current
