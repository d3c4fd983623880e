"""TorchTrainer: DataParallelTrainer whose workers share a torch.distributed process group."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from ..session import TrainContext
from ..trainer import Backend, DataParallelTrainer


@dataclass
class TorchConfig:
    """torch.distributed settings: backend ("gloo" on CPU, "nccl" with GPUs by default) and
    the timeout of its collectives, in seconds."""

    backend: str | None = None
    timeout_s: float = 1800.0


@dataclass
class TorchBackend(Backend):
    """Runs in each worker: init_process_group over a FileStore in the run directory."""

    backend: str = "gloo"
    timeout_s: float = 1800.0
    threads: int = 1
    store_path: str = ""

    def for_attempt(self, run_dir: str, attempt: int) -> TorchBackend:
        store = os.path.join(run_dir, ".torch", f"store-{attempt}-{uuid.uuid4().hex[:8]}")
        os.makedirs(os.path.dirname(store), exist_ok=True)
        return replace(self, store_path=store)

    def on_start(self, context: TrainContext) -> None:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(max(self.threads, 1))
        if self.backend == "nccl" and not torch.cuda.is_available():
            raise RuntimeError("TorchConfig(backend='nccl') needs GPUs; this worker sees none")
        if dist.is_initialized():  # left by an earlier attempt in this process
            dist.destroy_process_group()
        store = dist.FileStore(self.store_path, context.world_size)
        dist.init_process_group(self.backend, store=store, rank=context.world_rank,
                                world_size=context.world_size,
                                timeout=timedelta(seconds=self.timeout_s))

    def on_shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()  # peers still waiting on this worker see an error


class TorchTrainer(DataParallelTrainer):
    """Ray Train's TorchTrainer: the loop uses torch.distributed, prepare_model (DDP) and
    prepare_data_loader (DistributedSampler)."""

    def __init__(self, train_loop_per_worker: Callable, *,
                 torch_config: TorchConfig | None = None, **kwargs: Any):
        super().__init__(train_loop_per_worker, **kwargs)
        tc = torch_config or TorchConfig()
        use_gpu = self.scaling.use_gpu
        self.backend = TorchBackend(backend=tc.backend or ("nccl" if use_gpu else "gloo"),
                                    timeout_s=tc.timeout_s,
                                    threads=int(self.scaling.bundle().get("CPU", 1)))
