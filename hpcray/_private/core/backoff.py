"""Idle waiting for the poll loops (one class, used by every loop)."""

from __future__ import annotations

import os
import threading
import time


class Backoff:
    """Idle waiting for poll loops: spin right after work, then sleep up to ``max_delay``.

    After ``idle_time`` without work the cap rises to ``idle_delay``, so a rank with nothing
    to do stays well under 5 % of a core.
    """

    def __init__(self, spin_time: float, max_delay: float, idle_time: float = 0.05,
                 idle_delay: float = 0.005):
        self.spin_time = spin_time
        self.max_delay = max_delay
        self.idle_time = idle_time
        self.idle_delay = max(idle_delay, max_delay)
        self.wakeup = threading.Event()
        self.reset()

    def reset(self) -> None:
        now = time.monotonic()
        self.spin_until = now + self.spin_time
        self.idle_from = now + self.idle_time
        self.delay = 0.0

    def relax(self) -> None:
        """Another thread of this rank is busy and needs the core (a collective operation
        running hot): poll at the idle pace until there is work or a kick()."""
        self.spin_until = self.idle_from = 0.0

    def kick(self) -> None:
        """Wakes the sleeping loop now: another thread expects a reply soon."""
        self.wakeup.set()

    def sleep(self) -> None:
        if self.wakeup.is_set():
            self.wakeup.clear()
            self.reset()
            return
        if time.monotonic() < self.spin_until:
            os.sched_yield()  # gives the core to a runnable rank when cores are oversubscribed
            return
        cap = self.max_delay if time.monotonic() < self.idle_from else self.idle_delay
        self.delay = min(cap, max(self.delay * 2, 2e-5))
        if self.wakeup.wait(self.delay):
            self.wakeup.clear()
            self.reset()
