"""The runtime of a worker rank, for API calls made by tasks running there."""

from __future__ import annotations

_current = None


def set_current(runtime) -> None:
    global _current
    _current = runtime


def current():
    return _current
