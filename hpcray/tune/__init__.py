"""hpcray.tune: Ray Tune's API for hyperparameter sweeps, trials on persistent actor ranks."""

from .checkpoint import Checkpoint
from .config import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
from .registry import register_env, register_trainable
from .result import Result, ResultGrid, TrialError, TuneError
from .schedulers import (
    ASHAScheduler,
    AsyncHyperBandScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)
from .search.sample import (
    choice,
    grid_search,
    lograndint,
    loguniform,
    qloguniform,
    qrandint,
    qrandn,
    quniform,
    randint,
    randn,
    sample_from,
    uniform,
)
from .session import Trainable, get_checkpoint, get_trial_dir, get_trial_id, report
from .tuner import Tuner, with_parameters, with_resources

__all__ = [
    "ASHAScheduler", "AsyncHyperBandScheduler", "Checkpoint", "CheckpointConfig", "FIFOScheduler",
    "FailureConfig", "HyperBandScheduler", "MedianStoppingRule", "PopulationBasedTraining", "Result", "ResultGrid",
    "RunConfig", "Trainable", "TrialError", "TrialScheduler", "TuneConfig", "TuneError", "Tuner",
    "choice", "get_checkpoint", "get_trial_dir", "get_trial_id", "grid_search", "lograndint",
    "loguniform", "qloguniform", "qrandint", "qrandn", "quniform", "randint", "randn",
    "register_env", "register_trainable", "report",
    "sample_from", "uniform", "with_parameters", "with_resources",
]
