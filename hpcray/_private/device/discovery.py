"""GPU discovery and the rank-to-GPU mapping of one node (pure logic, no MPI).

The node leader asks NVML which GPUs this job may use (honouring CUDA_VISIBLE_DEVICES
and Slurm's GPU variables); ``assign`` then gives each worker rank of the node a GPU
(several ranks may share one, each advertising its share) or a set of GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Gpu:
    """One GPU a rank may use: its id as CUDA_VISIBLE_DEVICES names it, and what NVML says."""

    id: str
    name: str = "GPU"
    memory: int = 0          # bytes; 0 when unknown (declared, not discovered)
    uuid: str = ""

    def describe(self) -> dict:
        return {"id": self.id, "name": self.name, "memory": self.memory, "uuid": self.uuid}


@dataclass
class Assignment:
    """The GPUs of one rank and the GPU resource it advertises."""

    gpus: list[Gpu] = field(default_factory=list)
    share: float = 0.0

    @property
    def ids(self) -> list[str]:
        return [g.id for g in self.gpus]


def _visible_filter(env: dict) -> list[str] | None:
    """The GPU ids this process may use, from CUDA_VISIBLE_DEVICES or Slurm, or None (all)."""
    text = env.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        text = env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS")
        if text is None:
            return None
    text = text.strip()
    if text in ("", "-1", "NoDevFiles"):
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


def _nvml_gpus() -> list[Gpu]:
    """Every GPU NVML sees on this node, by physical index; [] without NVML or a driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no GPU: NVML raises several error classes
        return []
    gpus = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(Gpu(str(index), name.decode() if isinstance(name, bytes) else name,
                            int(memory), uuid.decode() if isinstance(uuid, bytes) else uuid))
    finally:
        pynvml.nvmlShutdown()
    return gpus


def select_visible(found: list[Gpu], visible: list[str] | None) -> list[Gpu]:
    """The GPUs of ``found`` named by ``visible`` (indices or UUID prefixes), in its order."""
    if visible is None:
        return list(found)
    chosen = []
    for name in visible:
        for gpu in found:
            if name == gpu.id or (name.startswith(("GPU-", "MIG-")) and gpu.uuid.startswith(name)):
                chosen.append(replace(gpu, id=name))
                break
    return chosen


def discover(declared: int | None = None, env: dict | None = None) -> list[Gpu]:
    """The GPUs this node's ranks may use.

    ``declared`` (``init(num_gpus=N)`` or HPCRAY_NUM_GPUS) caps the count, or stands in for
    GPUs NVML cannot see (their memory then reads 0).
    """
    env = os.environ if env is None else env
    visible = _visible_filter(env)
    gpus = select_visible(_nvml_gpus(), visible)
    if declared is None:
        return gpus
    if declared < 0:
        raise ValueError(f"num_gpus must be >= 0, got {declared}")
    if len(gpus) >= declared:
        return gpus[:declared]
    names = visible if visible else [str(i) for i in range(declared)]
    known = {g.id for g in gpus}
    extra = [Gpu(n) for n in names if n not in known]
    extra += [Gpu(str(i)) for i in range(len(names), declared)]
    return (gpus + extra)[:declared]


def assign(gpus: list[Gpu], workers: int) -> list[Assignment]:
    """GPUs for each of a node's ``workers`` worker ranks, in worker order.

    With at least as many workers as GPUs each worker gets one GPU, round robin, and
    advertises 1/k of it when k workers share it. With fewer, each gets a block of GPUs.
    """
    if not gpus or workers <= 0:
        return [Assignment() for _ in range(max(workers, 0))]
    count = len(gpus)
    if workers >= count:
        sharing = [0] * count
        for j in range(workers):
            sharing[j % count] += 1
        return [Assignment([gpus[j % count]], 1.0 / sharing[j % count]) for j in range(workers)]
    out = []
    for j in range(workers):
        block = gpus[j * count // workers:(j + 1) * count // workers]
        out.append(Assignment(block, float(len(block))))
    return out


def visible_devices(mine: list[Gpu], node: list[Gpu]) -> str:
    """CUDA_VISIBLE_DEVICES for a rank: its GPUs first (device 0 is its own), then the
    node's others, so CUDA IPC still reaches every GPU of the node."""
    order = mine + [g for g in node if g not in mine]
    return ",".join(g.uuid or g.id for g in order)
