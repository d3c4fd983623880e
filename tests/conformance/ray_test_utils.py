"""Helpers with the names of Ray's test utilities (SignalActor, wait_for_condition)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

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


@ray.remote(num_cpus=0)
class Semaphore:
    """An asyncio semaphore in an actor, as Ray's test utility of that name."""

    def __init__(self, value: int = 1):
        self._sema = asyncio.Semaphore(value=value)

    async def acquire(self) -> None:
        await self._sema.acquire()

    async def release(self) -> None:
        self._sema.release()

    async def locked(self) -> bool:
        return self._sema.locked()


def wait_for_condition(condition: Callable[[], bool], timeout: float = 30,
                       retry_interval_ms: int = 50) -> None:
    """Polls ``condition`` until it is true; raises RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(retry_interval_ms / 1000)
    raise RuntimeError(f"condition not met within {timeout}s")


DRIVERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drivers")


def run_driver(script: str, *args: str, timeout: float = 90, cwd: str | None = None) -> tuple:
    """Runs drivers/<script> as its own Ray program (a plain ``python``, in its own process
    group, killed at ``timeout``). Returns (returncode, the RESULT dict or None, output)."""
    # a fresh program: none of this (mpiexec-launched) process's launcher variables
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "HYDI_", "MPI_LOCAL", "MPIR_", "OMPI_"))}
    proc = subprocess.Popen([sys.executable, os.path.join(DRIVERS, script), *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise RuntimeError(f"{script} {args} timed out after {timeout}s:\n{out}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    result = json.loads(lines[-1][len("RESULT "):]) if lines else None
    return proc.returncode, result, out
