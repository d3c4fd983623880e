"""What runs inside a trial: report()/get_checkpoint(), the Trainable class API, and the
persistent actor that runs trial after trial.

Each trial advances one report per actor call: ``start`` runs the trial up to its first
report, ``resume(decision)`` hands the driver's decision (continue, save, stop) back to it and
runs up to its next report. A function trainable runs in a thread of its own whose report()
blocks until the next resume(); a Trainable is driven one step() per call.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from typing import Any

from . import registry
from .checkpoint import Checkpoint, persist

CONTINUE = "continue"
SAVE = "save"        # continue, after saving a checkpoint (class API)
STOP = "stop"        # end the trial (its last checkpoint stays)
PAUSE = "pause"      # end the trial after saving a checkpoint to resume from

_local = threading.local()


class _StopTrial(BaseException):
    """Raised inside report() to end a function trainable; BaseException so user code's
    ``except Exception`` does not swallow it."""


def report(metrics: dict, *, checkpoint: Checkpoint | None = None) -> None:
    """Reports one iteration's metrics (and optionally a checkpoint) from a function trainable.

    Blocks until the driver decides: returns to go on, or ends the trial if it was stopped.
    """
    session = getattr(_local, "session", None)
    if session is None:
        raise RuntimeError("tune.report() must be called inside a trial run by a Tuner")
    if not isinstance(metrics, dict):
        raise TypeError(f"tune.report() takes a dict of metrics, got {type(metrics).__name__}")
    session.report(metrics, checkpoint)


def get_checkpoint() -> Checkpoint | None:
    """The checkpoint this trial should resume from (after a restore, retry or PBT exploit)."""
    session = getattr(_local, "session", None)
    return session.checkpoint if session is not None else None


def get_trial_id() -> str | None:
    session = getattr(_local, "session", None)
    return session.trial_id if session is not None else None


def get_trial_dir() -> str | None:
    session = getattr(_local, "session", None)
    return session.trial_dir if session is not None else None


class Trainable:
    """Class API: override setup(config), step() -> dict, and to checkpoint,
    save_checkpoint(dir) -> dict | None and load_checkpoint(dict | dir)."""

    def __init__(self, config: dict | None = None):
        self.config = dict(config or {})
        self.iteration = 0
        self.trial_id = get_trial_id()
        self.logdir = get_trial_dir()

    def setup(self, config: dict) -> None:
        pass

    def step(self) -> dict:
        raise NotImplementedError("a Trainable must implement step()")

    def save_checkpoint(self, checkpoint_dir: str) -> dict | None:
        return None

    def load_checkpoint(self, checkpoint: dict | str) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def reset_config(self, new_config: dict) -> bool:
        return False


class _Session:
    """One trial on a runner: where its reports go and what it resumes from."""

    def __init__(self, trial_id: str, trial_dir: str, checkpoint: Checkpoint | None):
        self.trial_id = trial_id
        self.trial_dir = trial_dir
        self.checkpoint = checkpoint
        self.iteration = 0
        self.events: queue.Queue = queue.Queue(maxsize=1)
        self.decisions: queue.Queue = queue.Queue(maxsize=1)

    def report(self, metrics: dict, checkpoint: Checkpoint | None) -> None:
        self.iteration += 1
        path = self.save(checkpoint) if checkpoint is not None else None
        self.events.put(("result", dict(metrics), path))
        if self.decisions.get() in (STOP, PAUSE):
            raise _StopTrial

    def save(self, checkpoint: Checkpoint) -> str:
        target = os.path.join(self.trial_dir, f"checkpoint_{self.iteration:06d}")
        return persist(checkpoint, target)


def _save_trainable(obj: Trainable, session: _Session) -> str:
    import pickle

    path = os.path.join(session.trial_dir, f"checkpoint_{session.iteration:06d}")
    tmp = path + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    data = obj.save_checkpoint(tmp)
    if data is not None:
        with open(os.path.join(tmp, "trainable_state.pkl"), "wb") as f:
            pickle.dump(data, f)
    if os.path.exists(path):
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def _load_trainable(obj: Trainable, path: str) -> None:
    import pickle

    state = os.path.join(path, "trainable_state.pkl")
    if os.path.exists(state):
        with open(state, "rb") as f:
            obj.load_checkpoint(pickle.load(f))
    else:
        obj.load_checkpoint(path)


class TrialRunner:
    """The actor class: one per worker slot, running trials one after another (reused)."""

    def __init__(self, trainable: Any, registrations: dict | None = None):
        registry.install(registrations)  # the driver's register_env/register_trainable names
        self.trainable = trainable
        self.session: _Session | None = None
        self.thread: threading.Thread | None = None
        self.obj: Trainable | None = None

    def ping(self) -> bool:
        return True

    def start(self, trial_id: str, config: dict, trial_dir: str, checkpoint: str | None,
              iteration: int) -> tuple:
        """Begins a trial; returns its first event."""
        self._finish()
        os.makedirs(trial_dir, exist_ok=True)
        session = _Session(trial_id, trial_dir, Checkpoint(checkpoint) if checkpoint else None)
        session.iteration = iteration
        self.session = session
        trainable = self.trainable
        if isinstance(trainable, type) and issubclass(trainable, Trainable):
            try:
                _local.session = session
                obj = trainable.__new__(trainable)
                Trainable.__init__(obj, config)
                obj.setup(config)
                if checkpoint:
                    _load_trainable(obj, checkpoint)
            except Exception:  # noqa: BLE001 - the trial's error goes to the driver as data
                return ("error", traceback.format_exc(), None)
            finally:
                _local.session = None
            obj.iteration = iteration
            self.obj = obj
            return self._step(CONTINUE)
        self.thread = threading.Thread(target=self._run_function, args=(session, config),
                                       name=f"trial-{trial_id}", daemon=True)
        self.thread.start()
        return session.events.get()

    def resume(self, decision: str) -> tuple:
        """Passes the driver's decision to the running trial; returns its next event."""
        if self.obj is not None:
            return self._step(decision)
        session = self.session
        if session is None or self.thread is None:
            return ("done", None, None)
        session.decisions.put(decision)
        if decision in (STOP, PAUSE):
            self.thread.join()
            self._finish()
            return ("stopped", None, None)
        return session.events.get()

    def _run_function(self, session: _Session, config: dict) -> None:
        _local.session = session
        try:
            self.trainable(config)
            session.events.put(("done", None, None))
        except _StopTrial:
            pass
        except Exception:  # noqa: BLE001 - the trial's error goes to the driver as data
            session.events.put(("error", traceback.format_exc(), None))
        finally:
            _local.session = None

    def _step(self, decision: str) -> tuple:
        obj, session = self.obj, self.session
        _local.session = session
        try:
            if decision in (SAVE, PAUSE):
                path = _save_trainable(obj, session)
                if decision == PAUSE:
                    self._finish()
                    return ("stopped", None, path)
                saved = path
            else:
                saved = None
            if decision == STOP:
                self._finish()
                return ("stopped", None, None)
            start = time.time()
            result = obj.step()
            if not isinstance(result, dict):
                raise TypeError(f"Trainable.step() must return a dict, got "
                                f"{type(result).__name__}")
            obj.iteration += 1
            session.iteration += 1
            result.setdefault("time_this_iter_s", time.time() - start)
            return ("result", result, saved)
        except Exception:  # noqa: BLE001 - the trial's error goes to the driver as data
            self._finish()
            return ("error", traceback.format_exc(), None)
        finally:
            _local.session = None

    def save(self) -> str | None:
        """Checkpoints the running class trainable now."""
        if self.obj is None:
            return None
        return _save_trainable(self.obj, self.session)

    def _finish(self) -> None:
        if self.obj is not None:
            try:
                self.obj.cleanup()
            except Exception:  # noqa: BLE001 - cleanup errors must not break the next trial
                traceback.print_exc()
        if self.thread is not None and self.thread.is_alive() and self.session is not None:
            self.session.decisions.put(STOP)
            self.thread.join()
        self.obj = None
        self.thread = None
        self.session = None
