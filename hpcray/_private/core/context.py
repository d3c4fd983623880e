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


_auto_init: Any = None


def set_auto_init(init: Any) -> None:
    """The public API's ``init``: ``runtime()`` calls it when nothing runs yet (as Ray
    initializes on the first ``.remote()``)."""
    global _auto_init
    _auto_init = init


def runtime() -> Any:
    """The running runtime, started with default settings if there is none yet."""
    if _current is None and _auto_init is not None:
        _auto_init()
    if _current is None:
        raise RuntimeError("hpcray is not running: call hpcray.init() first")
    return _current
