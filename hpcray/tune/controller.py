"""The driver's loop: makes trials from the searcher, runs them on persistent TrialRunner
actors (one per free slot, reused trial after trial) and carries out the scheduler's
decisions at every report. Uses only hpcray's public API."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import hpcray

from . import registry
from . import schedulers as sched
from . import session as S
from .config import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
from .progress import ProgressReporter
from .result import TuneError
from .search import FINISHED, Searcher
from .storage import SEARCH_FILE, ExperimentStorage, _iteration, copy_checkpoint
from .trial import ERROR, PAUSED, PENDING, RUNNING, TERMINATED, Trial

_AUTO_KEYS = ("trial_id", "training_iteration", "time_this_iter_s", "time_total_s", "timestamp",
              "done", "config", "iterations_since_restore", "date", "pid", "hostname")
_STATE_EVERY_S = 1.0
#: On preemption: how long running trials get to reach their next report (a checkpoint, for a
#: Trainable) before the experiment state is saved. Slurm's warning and Hydra's grace both
#: leave more time than this; the save itself takes a few milliseconds.
PREEMPT_DRAIN_S = 10.0
#: How long the preemption callback waits for the driver's loop to save.
PREEMPT_SAVE_S = 30.0
#: New runner actors in a row that may die before answering once before fit() gives up.
MAX_RUNNER_FAILURES = 3


@dataclass
class _Run:
    """A trial occupying an actor, and the decision sent with the call now in flight."""

    trial: Trial
    actor: Any
    decision: str
    after_stop: str = TERMINATED
    last_time: float = 0.0
    before: str = PENDING  # the trial's state before this start (back to it if the runner fails)


def resources_of(trainable: Any) -> dict[str, float]:
    """{"cpu": .., "gpu": ..} one trial takes, set by with_resources (1 CPU by default)."""
    res = dict(getattr(trainable, "_tune_resources", None) or {})
    res.setdefault("cpu", 1)
    return res


def runner_resources_of(trainable: Any) -> dict[str, float]:
    """What the trial's runner actor itself holds: all of the trial's resources, except for a
    trainer, whose workers hold them."""
    return getattr(trainable, "_tune_runner_resources", None) or resources_of(trainable)


class TuneController:
    """Runs one experiment to the end (or its time budget); see Tuner.fit.

    restored: what Tuner.restore read back, for a restore: the run's "tag", how many of the
    trials the saved scheduler and searcher already knew ("known") and which of those had
    finished then ("finished")."""

    def __init__(self, trainable: Any, searcher: Searcher, scheduler: sched.TrialScheduler,
                 storage: ExperimentStorage, tune_config: TuneConfig, run_config: RunConfig,
                 trials: list[Trial] | None = None, prefix: str = "trial",
                 restored: dict | None = None):
        self.trainable = trainable
        self.searcher = searcher
        self.scheduler = scheduler
        self.storage = storage
        self.tc = tune_config
        self.rc = run_config
        self.ckpt = run_config.checkpoint_config or CheckpointConfig()
        self.failure = run_config.failure_config or FailureConfig()
        self.prefix = prefix
        self.trials: list[Trial] = list(trials or [])
        self.is_class = isinstance(trainable, type) and issubclass(trainable, S.Trainable)
        self.metric, self.mode = tune_config.metric, tune_config.mode
        self.tag = uuid.uuid4().hex[:5]
        self.search_done = False
        self.idle: list[Any] = []
        self.in_flight: dict[Any, _Run] = {}
        self.actors: set[Any] = set()  # every live runner, killed when the run ends
        self.answered: set[Any] = set()  # runners that answered once (so were created fine)
        self.runner_failures = 0  # runners in a row that died before coming up
        self.reporter = ProgressReporter(run_config.verbose, run_config.progress_interval_s)
        self._state_saved = 0.0
        self._fatal: BaseException | None = None
        self._preempting = threading.Event()  # set by the on_preempt callback
        self._preempt_saved = threading.Event()  # set by the loop once it saved for it
        self._held: list[_Run] = []  # function trials kept waiting at a report, on preemption
        if restored is not None:
            self.tag = restored["tag"] or self.tag
            self._catch_up(restored.get("known", 0), set(restored.get("finished", ())))

    def _catch_up(self, known: int, finished: set[str]) -> None:
        """A restore: tells the saved scheduler what happened after its snapshot (the trials
        made and ended since), in the order it happened, so it decides as it would have."""
        self.scheduler.attach(self.trials)
        for trial in self.trials[known:]:
            self.scheduler.on_trial_add(trial)
        for trial in self.trials:
            if trial.trial_id in finished:
                continue
            if trial.status == TERMINATED:
                self.scheduler.on_trial_complete(trial, trial.last_result)
            elif trial.status == ERROR:
                self.scheduler.on_trial_error(trial)

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> list[Trial]:
        self.start_time = time.monotonic()
        self.max_slots = self._capacity()
        _running.append(self)
        try:
            while True:
                if self._preempting.is_set():
                    self._wind_down()
                if self._over_budget():
                    self._stop_all()
                self.max_slots = self._capacity()  # ranks come and go
                self._launch()
                if not self.in_flight and self._nothing_left():
                    break
                ready, _ = hpcray.wait(list(self.in_flight), num_returns=1, timeout=0.5)
                for ref in ready:
                    self._handle(ref)
                self._end_stopped()
                self.reporter.update(self.trials, self._elapsed(), self.metric, self.mode)
                self._save_state()
                if self._fatal is not None:
                    raise self._fatal
        finally:
            _running.remove(self)
            self._release_actors()
            self._save_state(force=True)
            self.storage.close()
        self.reporter.summary(self.trials, self._elapsed(), self.metric, self.mode)
        return self.trials

    def _elapsed(self) -> float:
        return time.monotonic() - self.start_time

    def _over_budget(self) -> bool:
        budget = self.tc.time_budget_s
        return budget is not None and self._elapsed() > budget

    def _nothing_left(self) -> bool:
        """Called when no trial runs: true once the search and the waiting trials are done."""
        if self._over_budget():
            return True
        waiting = any(t.status in (PENDING, PAUSED) for t in self.trials)
        if waiting or not self.search_done:
            raise TuneError("no trial can start: the searcher suggests nothing while no trial "
                            "runs" if not waiting else "no waiting trial could be started")
        return True

    def _capacity(self) -> int:
        """How many trials may run at once: the cluster's CPUs (and GPUs) over one trial's."""
        res = resources_of(self.trainable)
        total = hpcray.cluster_resources()
        slots = math.inf
        for key, need in (("CPU", res.get("cpu", 1)), ("GPU", res.get("gpu", 0))):
            if need:
                slots = min(slots, int(total.get(key, 0) // need + 1e-9))
        if slots == 0:
            raise TuneError(f"a trial needs {res} but the job has {total}: no trial can run")
        if self.tc.max_concurrent_trials:
            slots = min(slots, self.tc.max_concurrent_trials)
        return int(slots) if slots != math.inf else 1

    # -- starting trials --------------------------------------------------------------------------

    def _launch(self) -> None:
        if self._over_budget() or self._preempting.is_set():
            return
        while len(self.in_flight) < self.max_slots:
            if not self.idle and len(self.actors) >= self.max_slots:
                return  # a new runner would wait for a CPU that a runner holds: wait for that one
            trial = self._next_trial()
            if trial is None:
                return
            self._start(trial, self._actor())

    def _next_trial(self) -> Trial | None:
        waiting = [t for t in self.trials if t.status in (PENDING, PAUSED)]
        if not any(t.status == PENDING for t in waiting) and not self.search_done:
            trial = self._new_trial()
            if trial is not None:
                return trial
        return self.scheduler.choose_trial_to_run(waiting) if waiting else None

    def _new_trial(self) -> Trial | None:
        trial_id = f"{self.tag}_{len(self.trials):05d}"
        try:
            config = self.searcher.suggest(trial_id)
        except (TypeError, ValueError) as exc:
            raise TuneError(f"bad search space (making trial {trial_id}): {exc}") from exc
        if config == FINISHED:
            self.search_done = True
            self.scheduler.on_search_finished()
            return None
        if config is None:
            return None
        trial = Trial(trial_id=trial_id, config=config, index=len(self.trials))
        creator = self.tc.trial_dirname_creator
        name = creator(trial) if creator else f"{self.prefix}_{trial_id}"
        trial.local_path = os.path.join(self.storage.path, name)
        self.trials.append(trial)
        self.storage.write_params(trial)
        self.scheduler.on_trial_add(trial)
        return trial

    def _actor(self) -> Any:
        if self.idle:
            return self.idle.pop()
        res = runner_resources_of(self.trainable)
        runner = hpcray.remote(S.TrialRunner).options(num_cpus=res.get("cpu", 1),
                                                      num_gpus=res.get("gpu", 0) or None)
        actor = runner.remote(self.trainable, registry.snapshot())
        self.actors.add(actor)
        return actor

    def _start(self, trial: Trial, actor: Any) -> None:
        if trial.extra.pop("exploited_now", False):
            pass  # PBT: continues from the clone of its donor's checkpoint, at its own iteration
        elif trial.checkpoint:  # a retry, a restore or a paused trial: from its checkpoint
            trial.iteration = _iteration(trial.checkpoint)
        else:
            trial.iteration = 0
        run = _Run(trial, actor, "start", last_time=time.time(), before=trial.status)
        trial.status = RUNNING
        trial.extra["since_restore"] = 0
        if actor not in self.answered:  # a new runner: first see that it came up at all
            run.decision = "ping"
            self.in_flight[actor.ping.remote()] = run
        else:
            self._send_start(run)

    def _send_start(self, run: _Run) -> None:
        trial = run.trial
        run.decision = "start"
        ref = run.actor.start.remote(trial.trial_id, trial.config, trial.local_path,
                                     trial.checkpoint, trial.iteration)
        self.in_flight[ref] = run

    # -- events from the runners ----------------------------------------------------------------

    def _handle(self, ref: Any) -> None:
        run = self.in_flight.pop(ref)
        try:
            answer = hpcray.get(ref)
        except hpcray.exceptions.ActorDiedError as exc:
            self._runner_died(run, exc)
            return
        self.answered.add(run.actor)
        if run.decision == "ping":
            self.runner_failures = 0
            self._send_start(run)
            return
        kind, payload, path = answer
        if path:
            self._add_checkpoint(run.trial, path)
        if kind == "result":
            self._on_result(run, payload)
        elif kind == "error":
            self._on_error(run, payload)
        else:  # "done" (function returned) or "stopped" (after a stop or pause decision)
            self._finish(run, TERMINATED if kind == "done" else run.after_stop)

    def _runner_died(self, run: _Run, exc: BaseException) -> None:
        """The runner's process died under the trial (os._exit, a signal, the OOM killer, a
        lost rank): the trial failed and is retried or ends in ERROR per FailureConfig; the
        sweep goes on. A runner that never came up at all is tried again a few times."""
        self.actors.discard(run.actor)
        # idle runners may have shared the dead process: new ones are made when needed
        for idle in self.idle:
            self.actors.discard(idle)
            _kill(idle)
        self.idle.clear()
        if run.decision != "ping":
            self._on_error(run, f"the trial's process died: {exc}", actor_lost=True)
            return
        self.runner_failures += 1
        if self.runner_failures >= MAX_RUNNER_FAILURES:
            raise TuneError(f"could not start a trial runner actor ({self.runner_failures} "
                            f"tries): {exc}") from exc
        run.trial.status = run.before  # it never started: not its failure

    def _on_result(self, run: _Run, metrics: dict) -> None:
        trial = run.trial
        now = time.time()
        trial.iteration += 1
        trial.extra["since_restore"] = trial.extra.get("since_restore", 0) + 1
        step_s = metrics.get("time_this_iter_s", now - run.last_time)
        run.last_time = now
        trial.time_total_s += step_s
        result = {**metrics, "trial_id": trial.trial_id, "training_iteration": trial.iteration,
                  "time_this_iter_s": step_s, "time_total_s": trial.time_total_s,
                  "timestamp": int(now), "done": bool(metrics.get("done", False)),
                  "iterations_since_restore": trial.extra["since_restore"],
                  "config": trial.config}
        self._check_metric(trial, result)
        trial.last_result = result
        self.storage.append_result(trial, result)
        self.searcher.on_trial_result(trial.trial_id, result)
        if result["done"] or self._should_stop(trial, result):
            decision = sched.STOP
        else:
            decision = self.scheduler.on_trial_result(trial, result)
        self._send(run, decision)

    def _check_metric(self, trial: Trial, result: dict) -> None:
        needed = [m for m in (self.metric, self.scheduler.metric, self.searcher.metric) if m]
        missing = sorted({m for m in needed if m not in result})
        if missing and not result["done"]:
            reported = sorted(k for k in result if k not in _AUTO_KEYS)
            self._fatal = TuneError(
                f"trial {trial.trial_id} reported a result without the metric(s) {missing} that "
                f"the Tuner's metric, scheduler or searcher needs; it reported {reported}")
            raise self._fatal

    def _should_stop(self, trial: Trial, result: dict) -> bool:
        stop = self.rc.stop
        if stop is None:
            return False
        if callable(stop):
            return bool(stop(trial.trial_id, result))
        for key, threshold in stop.items():
            value = result.get(key)
            if isinstance(value, (int, float)) and value >= threshold:
                return True
        return False

    def _send(self, run: _Run, decision: str) -> None:
        trial = run.trial
        if decision == sched.CONTINUE and self._preempting.is_set():
            if not self.is_class:  # it waits at this report (checkpointed if it reported one)
                self._held.append(run)
                return
            step, run.after_stop = S.PAUSE, PENDING  # checkpoint and end; resumed after restore
        elif decision == sched.CONTINUE:
            freq = self.ckpt.checkpoint_frequency
            step = S.SAVE if self.is_class and freq and trial.iteration % freq == 0 \
                else S.CONTINUE
        elif decision == sched.PAUSE:
            step, run.after_stop = S.PAUSE, PAUSED
        elif decision == sched.EXPLOIT:
            step, run.after_stop = S.STOP, PENDING
            self._clone_donor(trial)
        else:
            at_end = self.ckpt.checkpoint_at_end
            step = S.PAUSE if self.is_class and at_end else S.STOP
            run.after_stop = TERMINATED
        run.decision = step
        ref = run.actor.resume.remote(step)
        self.in_flight[ref] = run

    def _end_stopped(self) -> None:
        """Ends the paused trials the scheduler dropped (HyperBand), or ends them once their
        pause, still in flight, completes."""
        for trial in self.scheduler.take_stopped():
            if trial.status == PAUSED:
                trial.status = TERMINATED
                self.storage.close_results(trial)
                self.storage.write_trial_state(trial)
                self.searcher.on_trial_complete(trial.trial_id, trial.last_result)
            for run in self.in_flight.values():
                if run.trial is trial:
                    run.after_stop = TERMINATED

    def _clone_donor(self, trial: Trial) -> None:
        """PBT exploit: copies the donor's checkpoint into this trial's folder now, before the
        donor's num_to_keep can delete it."""
        source = trial.extra.pop("restore_from")
        target = os.path.join(trial.local_path, f"checkpoint_{trial.iteration:06d}")
        if os.path.abspath(source) != os.path.abspath(target):
            copy_checkpoint(source, target)
        self._add_checkpoint(trial, target)
        self.storage.write_params(trial)
        trial.extra["exploited_now"] = True

    def _on_error(self, run: _Run, text: str, actor_lost: bool = False) -> None:
        trial = run.trial
        trial.num_failures += 1
        trial.error = text
        self.storage.write_error(trial, text)
        limit = self.failure.max_failures
        retry = limit < 0 or trial.num_failures <= limit
        if not actor_lost:
            self._free_actor(run.actor)
        if retry:
            trial.status = PENDING
            return
        self.storage.close_results(trial)
        trial.status = ERROR
        self.storage.write_trial_state(trial)
        self.scheduler.on_trial_error(trial)
        self.searcher.on_trial_complete(trial.trial_id, None, error=True)
        if self.failure.fail_fast:
            self._fatal = TuneError(f"trial {trial.trial_id} failed (fail_fast):\n{text}")

    def _finish(self, run: _Run, status: str) -> None:
        trial = run.trial
        trial.status = status
        self._free_actor(run.actor)
        if status == TERMINATED:
            self.storage.close_results(trial)
            self.storage.write_trial_state(trial)
            self.scheduler.on_trial_complete(trial, trial.last_result)
            self.searcher.on_trial_complete(trial.trial_id, trial.last_result)

    def _free_actor(self, actor: Any) -> None:
        if self.tc.reuse_actors:
            self.idle.append(actor)
        else:
            _kill(actor)
            self.actors.discard(actor)

    def _add_checkpoint(self, trial: Trial, path: str) -> None:
        if path in trial.checkpoints:
            trial.checkpoints.remove(path)
        trial.checkpoints.append(path)
        trial.checkpoint = path
        keep = self.ckpt.num_to_keep
        while keep is not None and len(trial.checkpoints) > max(keep, 1):
            self.storage.remove_checkpoint(trial.checkpoints.pop(0))

    def _stop_all(self) -> None:
        """Time budget spent: the running trials end at their next report, no other starts."""
        if isinstance(self.scheduler, _StopEverything):
            return
        self.search_done = True
        for run in self.in_flight.values():
            run.after_stop = TERMINATED
        self.scheduler = _StopEverything(self.scheduler)

    # -- preemption -----------------------------------------------------------------------------

    def preempt(self) -> None:
        """From the on_preempt thread: asks the loop to wind down and save; returns once it has
        (or after PREEMPT_SAVE_S: then the last periodic save, at most a second old, stays)."""
        self._preempting.set()
        if not self._preempt_saved.wait(PREEMPT_DRAIN_S + PREEMPT_SAVE_S):
            print("hpcray.tune: the sweep did not save its state in time for the preemption; "
                  "Tuner.restore continues from the last periodic save", file=sys.stderr,
                  flush=True)

    def _wind_down(self) -> None:
        """Preempted: starts nothing more, lets each running trial reach its next report (a
        Trainable saves a checkpoint there), saves the experiment and waits for the job to
        end. Tuner.restore then goes on from exactly here."""
        deadline = time.monotonic() + PREEMPT_DRAIN_S
        while self.in_flight and time.monotonic() < deadline:
            ready, _ = hpcray.wait(list(self.in_flight), num_returns=1, timeout=0.2)
            for ref in ready:
                self._handle(ref)
            self._end_stopped()
        self._save_state(force=True)
        self.storage.flush()
        done = sum(t.is_finished for t in self.trials)
        print(f"hpcray.tune: preempted: saved the experiment at {self.storage.path} ({done} of "
              f"{len(self.trials)} trials finished; Tuner.restore continues the rest)",
              file=sys.stderr, flush=True)
        self._preempt_saved.set()
        time.sleep(PREEMPT_SAVE_S * 10)  # the job ends meanwhile (hpcray ends it after the callbacks)
        raise TuneError("the sweep was preempted and its state saved, but the job did not end")

    def _save_state(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._state_saved < _STATE_EVERY_S:
            return
        self._state_saved = now
        scheduler = self.scheduler.inner if isinstance(self.scheduler, _StopEverything) \
            else self.scheduler
        self.storage.write_pickle(SEARCH_FILE, {
            "searcher": self.searcher, "scheduler": scheduler, "tag": self.tag,
            "num_suggested": len(self.trials),
            "finished": [t.trial_id for t in self.trials if t.is_finished]})
        self.storage.write_experiment_state(self.trials, {
            "metric": self.metric, "mode": self.mode, "timestamp": time.time(),
            "search_done": self.search_done})

    def _release_actors(self) -> None:
        for actor in self.actors:
            _kill(actor)
        self.actors.clear()
        self.idle.clear()
        self.in_flight.clear()
        for trial in self.trials:
            if trial.status == RUNNING:  # cut off: resumed from its checkpoint by a restore
                trial.status = PENDING  # (PAUSED is the scheduler's: HyperBand resumes those)
            self.storage.close_results(trial)


_running: list[TuneController] = []  # the controllers in a fit() now (normally one)


def _kill(actor: Any) -> None:
    with contextlib.suppress(Exception):  # already dead with its rank
        hpcray.kill(actor)


def on_preempt() -> None:
    """hpcray.on_preempt callback: every running sweep saves its state (see _wind_down)."""
    for controller in _running.copy():  # a fit() may end meanwhile
        controller.preempt()


class _StopEverything(sched.TrialScheduler):
    """Wraps the scheduler once the time budget is spent: every result stops its trial."""

    def __init__(self, inner: sched.TrialScheduler):
        super().__init__(inner.metric, inner.mode)
        self.inner = inner

    def on_trial_result(self, trial, result):
        return sched.STOP

    def on_trial_complete(self, trial, result):
        self.inner.on_trial_complete(trial, result)

    def on_trial_error(self, trial):
        self.inner.on_trial_error(trial)
