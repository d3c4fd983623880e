"""Idle waiting for the poll loops (one class, used by every loop)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


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
        self.wait: Callable[[float], bool] = self.wakeup.wait
        self.notify: Callable[[], None] | None = None
        self.sleeping = False
        self.reset()

    def attach(self, wait: Callable[[float], bool], notify: Callable[[], None]) -> None:
        """Sleeps in ``wait(timeout)`` (True: it was woken or did work) instead of on an
        event, e.g. a select over file descriptors that the loop also serves;
        ``notify()`` interrupts it."""
        self.wait, self.notify = wait, notify

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
        if not self.wakeup.is_set():  # (setting an Event takes its lock and notifies)
            self.wakeup.set()
        if self.sleeping and self.notify is not None:
            self.notify()

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
        self.sleeping = True
        try:  # a kick() that saw sleeping False has set wakeup before this check
            woke = self.wakeup.is_set() or self.wait(self.delay)
        finally:
            self.sleeping = False
        if woke or self.wakeup.is_set():
            self.wakeup.clear()
            self.reset()
