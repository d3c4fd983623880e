"""Modules a worker rank imports while the job starts (``HPCRAY_PRELOAD``).

Heavy imports (torch, scikit-learn) take seconds of a worker's CPU; started here, they
overlap the rest of the start-up and the driver's own set-up. User code on the rank
(tasks, actors) starts once they are done, so it never imports them concurrently.
"""

from __future__ import annotations

import importlib
import sys
import threading

_done = threading.Event()
_done.set()


def start(modules: str) -> None:
    """Imports the comma-separated modules in a background thread."""
    names = [name.strip() for name in modules.split(",") if name.strip()]
    if names:
        _done.clear()
        threading.Thread(target=_run, args=(names,), daemon=True, name="hpcray-preload").start()


def _run(names: list[str]) -> None:
    try:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - the user's own import reports it again
                print(f"hpcray: HPCRAY_PRELOAD: cannot import {name}: {type(exc).__name__}: "
                      f"{exc}", file=sys.__stderr__, flush=True)
    finally:
        _done.set()


def wait() -> None:
    """Returns once the preloaded modules are imported (at once without any)."""
    _done.wait()
