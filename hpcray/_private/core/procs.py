"""Process liveness, shared by the head, the workers and the job's start and stop."""

from __future__ import annotations

import os
import sys
import time
import traceback


def batch_scheduling(on: bool) -> None:
    """Puts the calling thread, and so the threads and processes it starts later (the
    forkserver, so every executor), under SCHED_BATCH (Linux; elsewhere, or where refused,
    nothing changes)."""
    if not on or not hasattr(os, "SCHED_BATCH"):
        return
    try:
        if os.sched_getscheduler(0) == os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        pass


def process_gone(pid: int) -> bool:
    """True once pid has exited (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    except OSError:
        # no /proc, or no file descriptor left (EMFILE): ask the kernel without opening
        # anything (a zombie then counts as alive until its parent reaps it)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] in (b"Z", b"X")


class LoopFailures:
    """What a progress loop does when a step raises (e.g. no file descriptor left): it reports
    the error and goes on; if steps keep failing for ``limit`` seconds, the process ends with
    status 1, loudly, rather than leave a job that looks alive but makes no progress."""

    def __init__(self, who: str, limit: float = 60.0):
        self.who, self.limit = who, limit
        self.since = 0.0
        self.count = 0

    def ok(self) -> None:
        self.since = 0.0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.since = self.since or now
        self.count += 1
        if self.count == 1 or self.count % 1000 == 0:
            print(f"hpcray: {self.who} failed ({self.count} so far), going on:",
                  file=sys.__stderr__)
            traceback.print_exception(exc, file=sys.__stderr__)
        if now - self.since > self.limit:
            print(f"hpcray: {self.who} has failed for {self.limit:g} s; ending the job",
                  file=sys.__stderr__, flush=True)
            os._exit(1)
