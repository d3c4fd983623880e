"""Tasks and actors that kill their own processes: the job goes on (tests/test_isolation.py)."""

import ctypes
import os
import signal
import sys
import time

from jobkit import emit, poll

import hpcray

hpcray.init()
HERE = os.getcwd()
R = {"driver": os.getpid()}


def first_time(name: str) -> bool:
    """True on the first call with this name in this job (a marker file in the job's dir)."""
    path = os.path.join(HERE, name)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def error_of(ref, timeout=60):
    try:
        return ["ok", hpcray.get(ref, timeout=timeout)]
    except Exception as exc:  # noqa: BLE001 - the test checks the kind and the text
        return [type(exc).__name__, str(exc)]


@hpcray.remote(max_retries=2)
def sigkill_once():
    if first_time("sigkill"):
        os.kill(os.getpid(), signal.SIGKILL)
    return ["retried", os.getpid()]


@hpcray.remote(max_retries=0)
def segfault():
    ctypes.string_at(0)


@hpcray.remote(max_retries=0)
def hard_exit():
    os._exit(3)


@hpcray.remote
def square(x):
    return x * x


R["sigkill_retried"] = error_of(sigkill_once.remote())
R["segfault"] = error_of(segfault.remote())
R["exit"] = error_of(hard_exit.remote())
R["after"] = hpcray.get([square.remote(i) for i in range(8)], timeout=60)


@hpcray.remote(max_restarts=1, max_task_retries=0)
class Counter:
    def __init__(self, start):
        self.value = start

    def add(self, n):
        self.value += n
        return [self.value, os.getpid()]

    def die(self, sig):
        os.kill(os.getpid(), sig)

    def crash(self):
        ctypes.string_at(0)


counter = Counter.remote(100)
before = [hpcray.get(counter.add.remote(1)), hpcray.get(counter.add.remote(1))]
died = error_of(counter.die.remote(signal.SIGKILL))
restarted = hpcray.get(counter.add.remote(5), timeout=60)  # the constructor ran again: 100 + 5
R["actor"] = {"before": before, "died": died, "restarted": restarted}
R["actor"]["final"] = error_of(counter.crash.remote())  # a segfault; no restart left
R["actor"]["after_final"] = error_of(counter.add.remote(1))


@hpcray.remote(max_retries=3)
def sleeper(path):
    open(path, "w").close()
    time.sleep(300)


def cancel_running(force):
    flag = os.path.join(HERE, f"sleeping-{force}")
    ref = sleeper.remote(flag)
    poll(lambda: os.path.exists(flag), 60)
    hpcray.cancel(ref, force=force)
    return error_of(ref)


R["cancel_force"] = cancel_running(True)
R["cancel"] = cancel_running(False)
R["after_cancel"] = hpcray.get(square.remote(7), timeout=60)
emit(R)
sys.stdout.flush()
