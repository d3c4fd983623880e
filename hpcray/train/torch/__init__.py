"""PyTorch on hpcray.train: TorchTrainer sets up torch.distributed in every worker
(gloo on CPU, NCCL on GPUs) with a rendezvous file in the run directory: no addresses or
ports to configure."""

from .train_loop_utils import get_device, prepare_data_loader, prepare_model
from .trainer import TorchConfig, TorchTrainer

__all__ = ["TorchConfig", "TorchTrainer", "get_device", "prepare_data_loader", "prepare_model"]
