"""What every core job script shares: result output, waiting helpers, and the arrays the
tests recompute on their side (the same functions, imported by both)."""

import hashlib
import json
import os
import sys
import time

import numpy as np

import hpcray


def emit(result):
    # one write: a worker line the driver forwards meanwhile cannot land inside this one
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def settle_output():
    """Runs one task on every worker rank and waits for it.

    A rank sends its pending output before it runs its next task, so afterwards
    everything workers printed earlier has reached the driver. (Output a rank sends
    after a task's result may otherwise still be in flight when the driver exits.)
    """
    from hpcray.util import (
        PlacementGroupSchedulingStrategy,
        placement_group,
        remove_placement_group,
    )

    workers = hpcray.get_runtime_context().get_world_size() - 1
    pg = placement_group([{"CPU": 1}] * workers)
    hpcray.get(pg.ready(), timeout=30)
    nop = hpcray.remote(lambda: None)
    hpcray.get([nop.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
                for i in range(workers)], timeout=30)
    remove_placement_group(pg)


@hpcray.remote
def gate(path, value):
    """Returns value once the file path exists (no timing assumptions in the checks)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def poll(cond, timeout=30.0):
    """cond() once it is truthy, or its last value after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    return cond()


def kill_and_wait(pid, timeout=30.0):
    """SIGKILLs pid (a rank, say) and waits until it has exited (a zombie counts)."""
    import signal

    def gone():
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError):  # (reaped between open and read)
            return True

    os.kill(pid, signal.SIGKILL)
    return poll(gone, timeout)


def outcome(fn):
    """["ok", value] or ["err", exception class name, str(exception)]."""
    try:
        return ["ok", fn()]
    except Exception as exc:  # noqa: BLE001 - the job reports any error
        return ["err", type(exc).__name__, str(exc)]


def digest(a) -> list:
    """sha256 of the array's bytes, its dtype and shape (the same code runs in the job)."""
    a = np.asarray(a)
    return [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(), a.dtype.str,
            list(a.shape)]


def make_arrays() -> dict:
    rng = np.random.default_rng(2024)
    return {
        "small": rng.integers(-1000, 1000, size=100, dtype=np.int64),
        "mib": rng.standard_normal(2**17),                                         # 1 MiB
        "big": rng.integers(0, 2**31 - 1, size=50 * 2**20 // 4, dtype=np.int32),  # 50 MiB
        "fortran": np.asfortranarray(rng.standard_normal((300, 500))),
        "strided": rng.standard_normal(2**18)[::3],
        "empty": np.zeros((0, 7), dtype=np.float32),
    }


def regenerate_array(seed: int, n: int):
    return np.random.default_rng(seed).integers(0, 2**31 - 1, size=n, dtype=np.int32)
