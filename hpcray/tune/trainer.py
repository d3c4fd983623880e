"""An hpcray.train trainer as the trainable, as in Ray:
``Tuner(DataParallelTrainer(loop, ...), param_space={"train_loop_config": {...}})``.

Each trial fits a copy of the trainer with the trial's ``train_loop_config`` merged over the
trainer's own; every report of its workers is a report of the trial (rank 0's metrics, and the
checkpoint published with it), so schedulers stop, pause and resume trainers like any trial.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ..train import Checkpoint as TrainCheckpoint
from ..train import DataParallelTrainer, UserCallback
from . import session
from .checkpoint import Checkpoint
from .result import TuneError

PARAM_KEYS = ("train_loop_config",)


def is_trainer(trainable: Any) -> bool:
    return isinstance(trainable, DataParallelTrainer)


class _ReportToTune(UserCallback):
    """Each train report becomes a report of the trial running the trainer."""

    def after_report(self, metrics: dict, checkpoint: TrainCheckpoint | None) -> None:
        session.report(metrics, checkpoint=Checkpoint(checkpoint.path) if checkpoint else None)


def as_trainable(trainer: DataParallelTrainer, param_space: dict) -> Any:
    """A function trainable that fits the trainer once per trial (resumed from the trial's
    checkpoint). Its runner actor holds no CPU; the trial's size, for how many trials run at
    once, is the trainer's workers (its placement group reserves them)."""
    unknown = sorted(set(param_space) - set(PARAM_KEYS))
    if unknown:
        raise TuneError(f"a trainer's param_space takes only {list(PARAM_KEYS)}, got "
                         f"{unknown}: put the trial's settings under 'train_loop_config'")

    def fit_trainer(config: dict) -> None:
        trial = copy.copy(trainer)
        trial.config = {**(trainer.config or {}), **config.get("train_loop_config", {})}
        trial.run_config = dataclasses.replace(
            trainer.run_config, name="train", storage_path=session.get_trial_dir(), verbose=0,
            callbacks=[*trainer.run_config.callbacks, _ReportToTune()])
        start = session.get_checkpoint()
        if start is not None:
            trial.resume_from_checkpoint = TrainCheckpoint(start.path)
        trial.fit()

    bundle = trainer.scaling.bundle()
    workers = trainer.scaling.num_workers
    fit_trainer.__name__ = type(trainer).__name__
    fit_trainer._tune_resources = {"cpu": workers * bundle.get("CPU", 0),
                                   "gpu": workers * bundle.get("GPU", 0)}
    fit_trainer._tune_runner_resources = {"cpu": 0}
    return fit_trainer
