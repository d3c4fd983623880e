"""Ray's ``wait(fetch_local=False)``: objects ready anywhere in the job, nothing fetched."""

from __future__ import annotations

import time
from typing import Any


def wait_anywhere(runtime: Any, ids: list[int], deadline: float | None, need: int) -> set[int]:
    """The ids ready here or on any rank, asked of the head (which tracks every object) until
    ``need`` of them are or the deadline passes. An id the head no longer knows (freed) counts
    as ready: get() then raises for it, as after a fetching wait."""
    delay = 0.0005
    while True:
        ready = {i for i in ids if i in runtime.store.objects}
        rest = [i for i in ids if i not in ready]
        if rest and len(ready) < need:
            ready.update(runtime.request("ready", rest))
        now = time.monotonic()
        if len(ready) >= need or deadline is not None and now >= deadline:
            return ready
        time.sleep(delay if deadline is None else min(delay, deadline - now))
        delay = min(delay * 2, 0.05)
