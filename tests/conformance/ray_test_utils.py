"""Helpers with the names of Ray's test utilities (SignalActor, wait_for_condition)."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import hpcray as ray


@ray.remote(num_cpus=0)
class SignalActor:
    """An event across tasks: ``wait`` blocks until ``send`` is called."""

    def __init__(self):
        self.ready_event = asyncio.Event()
        self.num_waiters = 0

    def send(self, clear: bool = False) -> None:
        self.ready_event.set()
        if clear:
            self.ready_event.clear()

    async def wait(self, should_wait: bool = True) -> None:
        if should_wait:
            self.num_waiters += 1
            await self.ready_event.wait()
            self.num_waiters -= 1

    async def cur_num_waiters(self) -> int:
        return self.num_waiters


def wait_for_condition(condition: Callable[[], bool], timeout: float = 30,
                       retry_interval_ms: int = 50) -> None:
    """Polls ``condition`` until it is true; raises RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(retry_interval_ms / 1000)
    raise RuntimeError(f"condition not met within {timeout}s")
