"""Idle waiting for the poll loops (one class, used by every loop)."""

from __future__ import annotations

import os
import threading
import time


class Backoff:
    """Idle waiting for poll loops: spin right after work, then sleep up to ``max_delay``."""

    def __init__(self, spin_time: float, max_delay: float):
        self.spin_time = spin_time
        self.max_delay = max_delay
        self.wakeup = threading.Event()
        self.reset()

    def reset(self) -> None:
        self.spin_until = time.monotonic() + self.spin_time
        self.delay = 0.0

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
        self.delay = min(self.max_delay, max(self.delay * 2, 2e-5))
        if self.wakeup.wait(self.delay):
            self.wakeup.clear()
            self.reset()
