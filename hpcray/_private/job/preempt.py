"""Preemption: SIGTERM or the requested warning signal runs the on_preempt callbacks on the
head, requeues the Slurm job when it was submitted with requeue enabled, and ends the job.

Worker ranks do not die of SIGTERM at once: the head may still need them while its callbacks
checkpoint. They leave when the head ends the job, or ``preempt_grace`` seconds later.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping

_callbacks: list[Callable[[], object]] = []
_callbacks_lock = threading.Lock()

_OFF = ("", "none", "off", "0", "no", "false")


def register(fn: Callable[[], object]) -> Callable[[], object]:
    """Adds fn to the callbacks the head runs when the job is preempted."""
    if not callable(fn):
        raise TypeError(f"on_preempt() needs a callable, got {type(fn).__name__}")
    with _callbacks_lock:
        _callbacks.append(fn)
    return fn


def callbacks() -> list[Callable[[], object]]:
    with _callbacks_lock:
        return list(_callbacks)


def launched_by_hydra(env: Mapping[str, str]) -> bool:
    """MPICH's Hydra gives its ranks these; it also sends SIGUSR1 when a rank dies."""
    return any(env.get(k) for k in ("MPI_LOCALNRANKS", "MPI_LOCALRANKID", "HYDI_CONTROL_FD"))


def parse_signal(text: str) -> signal.Signals:
    """"USR1", "SIGUSR1" or "10" as a signal; ValueError with the accepted forms otherwise."""
    name = text.strip().upper()
    if name.isdigit():
        try:
            return signal.Signals(int(name))
        except ValueError:
            pass
    else:
        name = name if name.startswith("SIG") else "SIG" + name
        if hasattr(signal.Signals, name):
            return signal.Signals[name]
    raise ValueError(f"HPCRAY_PREEMPT_SIGNAL={text!r} is not a signal: use a name like USR1, "
                     "USR2 or TERM, a number, or 'none'")


def preempt_signal(setting: str, env: Mapping[str, str] | None = None) -> signal.Signals | None:
    """The warning signal besides SIGTERM. Default: SIGUSR1 inside a Slurm allocation, unless
    Hydra (mpiexec) started the ranks: there SIGUSR1 reports a dead rank, so pick USR2."""
    env = os.environ if env is None else env
    if setting.strip().lower() in ("none", "off", "0", "no", "false"):
        return None
    if setting.strip():
        return parse_signal(setting)
    if env.get("SLURM_JOB_ID") and not launched_by_hydra(env):
        return signal.SIGUSR1
    return None


def requeue_enabled(setting: str, job_id: str, env: Mapping[str, str]) -> bool:
    """Whether to requeue: "1"/"0" decide; "auto" asks Slurm whether the job has Requeue=1."""
    value = setting.strip().lower()
    if not env.get("SLURM_JOB_ID"):
        return False
    if value in _OFF:
        return False
    if value != "auto":
        return True
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return False
    try:
        out = subprocess.run([scontrol, "show", "job", "-o", job_id], capture_output=True,
                             text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return " Requeue=1 " in f" {out} " or " Requeue=1\n" in out


def requeue(job_id: str) -> tuple[bool, str]:
    """``scontrol requeue job_id``; (succeeded, what scontrol said)."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return False, "scontrol is not on PATH"
    try:
        proc = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


class HeadPreemption:
    """On the head: a signal starts one thread that checkpoints, requeues and ends the job."""

    def __init__(self, head, end_job: Callable[[int], None]):
        self.head = head
        self.end_job = end_job
        self.started = False
        self.signal = preempt_signal(head.config.preempt_signal)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self.on_signal)
        if self.signal is not None and self.signal != signal.SIGTERM:
            signal.signal(self.signal, self.on_signal)

    def on_signal(self, signum: int, frame) -> None:
        if self.started:
            return
        self.started = True
        threading.Thread(target=self.run, args=(signum,), name="hpcray-preempt",
                         daemon=True).start()

    def run(self, signum: int) -> None:
        name = signal.Signals(signum).name
        job_id = self.head.job_id
        todo = callbacks()
        print(f"hpcray: {name} received: running {len(todo)} on_preempt callback(s)",
              file=sys.stderr, flush=True)
        for fn in todo:
            try:
                fn()
            except BaseException:  # noqa: BLE001 - one failing callback must not stop the others
                print(f"hpcray: on_preempt callback {getattr(fn, '__name__', fn)!r} failed:",
                      file=sys.stderr)
                traceback.print_exc()
        env = os.environ
        if requeue_enabled(self.head.config.requeue, job_id, env):
            ok, said = requeue(job_id)
            if ok:
                print(f"hpcray: requeued Slurm job {job_id}; ending this run", file=sys.stderr,
                      flush=True)
            else:
                print(f"hpcray: scontrol requeue {job_id} failed ({said}); ending the job",
                      file=sys.stderr, flush=True)
        else:
            print(f"hpcray: ending the job after {name}", file=sys.stderr, flush=True)
        self.end_job(128 + signum)


class WorkerPreemption:
    """On a worker: SIGTERM is noted, not fatal; the rank ends when the head ends the job,
    or ``grace`` seconds after the signal if the head never does."""

    def __init__(self, worker, grace: float, warning: signal.Signals | None):
        self.worker = worker
        self.grace = grace
        self.warning = warning
        self.term_at: float | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self.on_term)
        if self.warning is not None and self.warning != signal.SIGTERM:
            signal.signal(self.warning, lambda signum, frame: None)  # the head acts on it

    def on_term(self, signum: int, frame) -> None:
        if self.term_at is None:
            self.term_at = time.monotonic()

    def expired(self) -> bool:
        """True once the grace after SIGTERM has run out without the head ending the job."""
        return self.term_at is not None and time.monotonic() - self.term_at > self.grace
