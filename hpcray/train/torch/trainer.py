"""TorchTrainer: DataParallelTrainer whose workers share a torch.distributed process group."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from ...collective.gpu_path import NCCL, choose_group_path
from ..session import TrainContext
from ..trainer import Backend, DataParallelTrainer
from .train_loop_utils import get_device


@dataclass
class TorchConfig:
    """torch.distributed settings: backend (default "gloo" on CPU; with GPUs "nccl" where
    each worker holds a GPU of its own, else "gloo") and the timeout of its collectives, in
    seconds."""

    backend: str | None = None
    timeout_s: float = 1800.0


def choose_backend(gpus: list[str], cuda: bool) -> tuple[str, str]:
    """torch.distributed's backend for workers whose GPUs are gpus (uuid each; "" for
    none), and why: NCCL needs every worker on a GPU of its own, else gloo."""
    without = [i for i, gpu in enumerate(gpus) if not gpu]
    if without:
        return "gloo", f"workers {without} have no GPU"
    choice = choose_group_path(gpus, None if cuda else "torch sees no CUDA device in the workers",
                               who="workers")
    return ("nccl" if choice.path == NCCL else "gloo"), choice.reason


def _own_gpu() -> str:
    """The calling worker's GPU (uuid, or node/id where NVML gave none); "" without one."""
    from ... import api

    if not api.get_gpu_ids():
        return ""
    return api.get_runtime_context().get_gpu_identity()


@dataclass
class TorchBackend(Backend):
    """Runs in each worker: init_process_group over a FileStore in the run directory.

    backend None: "nccl" or "gloo", chosen from the workers' GPUs, which they tell each
    other through the same store."""

    backend: str | None = "gloo"
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
        device = get_device()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store = dist.FileStore(self.store_path, context.world_size)
        backend = self.backend or self._choose(store, context, device.type == "cuda")
        dist.init_process_group(backend, store=store, rank=context.world_rank,
                                world_size=context.world_size,
                                timeout=timedelta(seconds=self.timeout_s))

    def _choose(self, store, context: TrainContext, cuda: bool) -> str:
        store.set(f"hpcray/gpu/{context.world_rank}", _own_gpu())
        gpus = [store.get(f"hpcray/gpu/{r}").decode() for r in range(context.world_size)]
        backend, why = choose_backend(gpus, cuda)
        if context.world_rank == 0:
            print(f"hpcray.train: torch.distributed backend {backend!r}: {why}", flush=True)
        return backend

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
        self.backend = TorchBackend(backend=tc.backend or (None if use_gpu else "gloo"),
                                    timeout_s=tc.timeout_s,
                                    threads=int(self.scaling.bundle().get("CPU", 1)))
