"""A Ray program whose worker dies (os._exit, sys.exit, force cancel); run as a separate driver.

A worker rank's death ends an hpcray session's process (see docs/conformance.md), so the
conformance tests run these scenarios here, in their own process, and read the printed
``RESULT`` line. Usage: ``python worker_death.py SCENARIO``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import hpcray as ray


def _error_name(ref) -> str:
    try:
        ray.get(ref, timeout=60)
        return "no error"
    except Exception as exc:  # noqa: BLE001 - the type is what is checked
        return type(exc).__name__


def task_os_exit() -> dict:
    @ray.remote(max_retries=0)
    def die():
        os._exit(1)

    @ray.remote
    def ok():
        return 1

    return {"error": _error_name(die.remote()), "after": ray.get(ok.remote(), timeout=60)}


def task_sys_exit() -> dict:
    @ray.remote(max_retries=0)
    def leave():
        sys.exit(3)

    @ray.remote
    def ok():
        return 1

    return {"error": _error_name(leave.remote()), "after": ray.get(ok.remote(), timeout=60)}


def task_retried_after_crash() -> dict:
    marker = os.path.join(os.getcwd(), "crashed_once")

    @ray.remote(max_retries=2)
    def crash_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return "retried"

    return {"value": ray.get(crash_once.remote(marker), timeout=60)}


def actor_os_exit() -> dict:
    @ray.remote(max_restarts=0)
    class Dier:
        def die(self):
            os._exit(0)

        def ping(self):
            return "pong"

    d = Dier.remote()
    first = ray.get(d.ping.remote(), timeout=60)
    return {"first": first, "die": _error_name(d.die.remote()), "after": _error_name(d.ping.remote())}


def actor_restart_after_crash() -> dict:
    @ray.remote(max_restarts=1)
    class Restartable:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

        def die(self):
            os._exit(0)

    a = Restartable.remote()
    ray.get(a.inc.remote(), timeout=60)
    died = _error_name(a.die.remote())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            return {"died": died, "after": ray.get(a.inc.remote(), timeout=30)}
        except ray.exceptions.RayActorError:
            time.sleep(0.1)
    return {"died": died, "after": None}


def force_cancel() -> dict:
    @ray.remote(max_retries=0)
    def spin():
        while True:
            time.sleep(0.01)

    @ray.remote
    def ok():
        return 1

    ref = spin.remote()
    ray.wait([ref], timeout=0.5)
    ray.cancel(ref, force=True)
    return {"error": _error_name(ref), "after": ray.get(ok.remote(), timeout=60)}


def session_survives_worker_death() -> dict:
    result = task_os_exit()
    ray.shutdown()
    ray.init(num_cpus=2)

    @ray.remote
    def ok():
        return 2

    result["next_session"] = ray.get(ok.remote(), timeout=60)
    return result


SCENARIOS = {f.__name__: f for f in (task_os_exit, task_sys_exit, task_retried_after_crash,
                                     actor_os_exit, actor_restart_after_crash, force_cancel,
                                     session_survives_worker_death)}

if __name__ == "__main__":
    ray.init(num_cpus=2)
    print("RESULT " + json.dumps(SCENARIOS[sys.argv[1]]()), flush=True)
    ray.shutdown()
    print("EXITED CLEANLY", flush=True)
