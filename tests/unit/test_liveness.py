"""The liveness path survives what a shared node throws at it: no file descriptors left,
handlers that raise."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import hpcray
from hpcray._private.core.procs import LoopFailures, process_gone


def test_process_gone_without_file_descriptors() -> None:
    """With no descriptor left /proc cannot be opened; the answer still comes, without
    importing anything or raising."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        assert process_gone(child.pid) is False
        assert process_gone(2**22 + 12345) is True  # above pid_max: never a live process
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        child.kill()
        child.wait()
    assert process_gone(child.pid) is True


def test_loop_failures_report_and_go_on(capfd) -> None:
    failures = LoopFailures("test loop", limit=60)
    for _ in range(3):
        failures.failed(OSError(24, "Too many open files"))
    failures.ok()
    err = capfd.readouterr().err
    assert err.count("test loop failed") == 1 and "Too many open files" in err


def test_the_head_keeps_serving_when_a_step_raises() -> None:
    """The head's liveness check raising (as with EMFILE) does not end its progress loop."""
    from loopback_job import loopback_job

    @hpcray.remote
    def add(a, b):
        return a + b

    with loopback_job(workers=1) as head:
        calls = {"n": 0}
        real = head.check_ranks

        def flaky(now):
            calls["n"] += 1
            if calls["n"] <= 3:
                raise OSError(24, "Too many open files")
            real(now)

        head.check_ranks = flaky
        head.next_check = 0.0
        deadline = time.monotonic() + 30
        while calls["n"] < 5 and time.monotonic() < deadline:  # checks run every 0.2 s
            time.sleep(0.05)
        assert calls["n"] >= 5, "the progress loop stopped after a failing step"
        assert head.thread.is_alive()
        assert hpcray.get([add.remote(i, i) for i in range(50)]) == [2 * i for i in range(50)]


def test_one_signal_handler_whatever_the_number_of_sessions() -> None:
    """Each init() used to wrap the previous SIGUSR1 handler (and set an Event inside it):
    after many sessions the chain deadlocked or hit RecursionError. Now one handler stays,
    and it calls the current session's callback only."""
    import signal

    from hpcray._private.job import bootstrap

    previous = signal.getsignal(signal.SIGUSR1)
    calls: list[int] = []
    try:
        for session in range(2000):
            bootstrap._survive_peer_failure(lambda s=session: calls.append(s))
        handler = signal.getsignal(signal.SIGUSR1)
        bootstrap._survive_peer_failure(lambda: calls.append(-1))
        assert signal.getsignal(signal.SIGUSR1) is handler
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls == [-1]
    finally:
        signal.signal(signal.SIGUSR1, previous)
        bootstrap._peer_failure.update(installed=False, callback=None)
