"""Inside a TorchTrainer loop: the worker's device, its DDP model and its data shard."""

from __future__ import annotations

from typing import Any


def get_device() -> Any:
    """torch.device("cuda:0") in a worker given a GPU, else the CPU."""
    import torch

    from ... import api

    if api.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def prepare_model(model: Any, move_to_device: bool = True, parallel_strategy: str | None = "ddp",
                  parallel_strategy_kwargs: dict | None = None) -> Any:
    """Moves the model to the worker's device and wraps it in DistributedDataParallel."""
    from torch.nn.parallel import DistributedDataParallel

    device = get_device()
    if move_to_device:
        model = model.to(device)
    _, size = _world()
    if size > 1 and parallel_strategy == "ddp":
        kwargs = dict(parallel_strategy_kwargs or {})
        if device.type == "cuda":
            kwargs.setdefault("device_ids", [device])
        model = DistributedDataParallel(model, **kwargs)
    elif parallel_strategy not in ("ddp", None):
        raise ValueError(f"parallel_strategy must be 'ddp' or None, got {parallel_strategy!r}")
    return model


class _EpochLoader:
    """A DataLoader whose DistributedSampler moves to the next epoch at each new iteration,
    and whose batches land on the worker's device."""

    def __init__(self, loader, device):
        self.loader = loader
        self.device = device
        self.epoch = 0

    def __iter__(self):
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self.epoch += 1
        for batch in self.loader:
            yield _to(batch, self.device) if self.device.type != "cpu" else batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def _to(batch, device):
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def prepare_data_loader(data_loader: Any, add_dist_sampler: bool = True,
                        move_to_device: bool = True) -> Any:
    """Gives each worker its part of the data (a DistributedSampler that keeps the loader's
    shuffling) and moves batches to the worker's device."""
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    rank, size = _world()
    if add_dist_sampler and size > 1 and not isinstance(data_loader.sampler, DistributedSampler):
        if getattr(data_loader, "batch_sampler", None) is not None and \
                type(data_loader.batch_sampler).__name__ != "BatchSampler":
            raise ValueError("prepare_data_loader cannot shard a DataLoader with a custom "
                             "batch_sampler; pass add_dist_sampler=False and shard it yourself")
        sampler = DistributedSampler(data_loader.dataset, num_replicas=size, rank=rank,
                                     shuffle=isinstance(data_loader.sampler, RandomSampler))
        data_loader = DataLoader(
            data_loader.dataset, batch_size=data_loader.batch_size, sampler=sampler,
            num_workers=data_loader.num_workers, collate_fn=data_loader.collate_fn,
            pin_memory=data_loader.pin_memory, drop_last=data_loader.drop_last,
            timeout=data_loader.timeout, worker_init_fn=data_loader.worker_init_fn)
    device = get_device() if move_to_device else None
    return _EpochLoader(data_loader, device if device is not None else _cpu())


def _cpu():
    import torch

    return torch.device("cpu")
