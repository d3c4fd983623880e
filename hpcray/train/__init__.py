"""Distributed training with Ray Train's API: trainers, configs, checkpoints and reports.

    trainer = DataParallelTrainer(loop, scaling_config=ScalingConfig(num_workers=4))
    result = trainer.fit()

Inside the loop: report(), get_context(), get_checkpoint(), get_dataset_shard().
PyTorch: hpcray.train.torch.TorchTrainer.
"""

from .checkpoint import Checkpoint
from .config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from .session import TrainContext, get_checkpoint, get_context, get_dataset_shard, report
from .trainer import Backend, DataParallelTrainer, Result, TrainingFailedError

__all__ = ["Backend", "Checkpoint", "CheckpointConfig", "DataParallelTrainer", "FailureConfig",
           "Result", "RunConfig", "ScalingConfig", "TrainContext", "TrainingFailedError",
           "UserCallback", "get_checkpoint", "get_context", "get_dataset_shard", "report"]
