"""Ray's ``max_pending_calls``: the calls one process submitted to each actor and that have
not finished, counted where the handles are held (the driver, a task, an actor).

Plain bookkeeping: which calls still run is asked of the head (``unfinished``) only when a
count reaches its limit, so calls below the limit cost nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ...exceptions import PendingCallsLimitExceeded


class PendingCalls:
    """Ids of the calls submitted to each actor from this process, maybe not finished."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[int, list[int]] = {}  # actor id -> call (task) ids

    def admit(self, actor_id: int, limit: int, call_id: int,
              unfinished: Callable[[list[int]], list[int]], what: str) -> None:
        """Counts the call ``call_id``, or raises PendingCallsLimitExceeded when ``limit``
        calls to the actor are unfinished; ``unfinished(ids)`` names those of ids that are."""
        with self.lock:
            calls = self.calls.setdefault(actor_id, [])
            if len(calls) >= limit:
                calls[:] = unfinished(calls)
                if len(calls) >= limit:
                    raise PendingCallsLimitExceeded(
                        f"{what} was not submitted: this process has {len(calls)} calls to "
                        f"the actor that have not finished, its max_pending_calls={limit}. "
                        "Wait for some of them (hpcray.get/hpcray.wait) and call again, or "
                        "create the actor with a higher max_pending_calls (-1: no limit).")
            calls.append(call_id)

    def forget(self, actor_id: int, call_id: int) -> None:
        """A call that was admitted but could not be submitted."""
        with self.lock:
            calls = self.calls.get(actor_id)
            if calls and call_id in calls:
                calls.remove(call_id)
