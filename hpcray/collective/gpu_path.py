"""Which path a GPU collective group takes, and what NCCL can reduce (pure logic, no MPI).

A group runs on NCCL when every member holds a GPU of its own; NCCL refuses two members
on one GPU (NCCL_ERROR_INVALID_USAGE), so a group whose members share one, or a job
without NCCL, stages device memory through the host and runs the MPI collectives.
TorchTrainer asks the same question to choose between torch's "nccl" and "gloo".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .types import CollectiveError, ReduceOp

NCCL, STAGED = "nccl", "staged"
PATHS = ("auto", NCCL, STAGED)

# ncclDataType_t and ncclRedOp_t (nccl.h); ncclAvg needs NCCL >= 2.10
NCCL_UINT8 = 1
NCCL_TYPES = {np.dtype(t): code for t, code in (
    (np.int8, 0), (np.uint8, 1), (np.int32, 2), (np.uint32, 3), (np.int64, 4), (np.uint64, 5),
    (np.float16, 6), (np.float32, 7), (np.float64, 8))}
NCCL_OPS = {ReduceOp.SUM: 0, ReduceOp.PRODUCT: 1, ReduceOp.MAX: 2, ReduceOp.MIN: 3,
            ReduceOp.AVG: 4}


@dataclass(frozen=True)
class GroupPath:
    """The chosen path ("nccl" or "staged") and why, in words."""

    path: str
    reason: str


def shared_gpus(gpus: list[str]) -> dict[str, list[int]]:
    """GPUs held by more than one member: gpu -> the members (indices into gpus)."""
    holders: dict[str, list[int]] = {}
    for member, gpu in enumerate(gpus):
        if gpu:
            holders.setdefault(gpu, []).append(member)
    return {gpu: members for gpu, members in holders.items() if len(members) > 1}


def choose_group_path(gpus: list[str], nccl_missing: str | None = None,
                      forced: str = "auto", who: str = "ranks") -> GroupPath:
    """The path of a group whose member i holds GPU gpus[i] (uuid; "" for none).

    ``nccl_missing`` says why NCCL cannot run here (None: it can). ``forced``
    (HPCRAY_COLLECTIVE_GPU_PATH) picks "nccl" or "staged"; a forced NCCL path that NCCL
    refuses falls back to staging when the communicator fails. Raises CollectiveError
    naming the members without a GPU. ``who`` names the members in messages.
    """
    if forced not in PATHS:
        raise ValueError(f"HPCRAY_COLLECTIVE_GPU_PATH={forced!r}: choose one of {', '.join(PATHS)}")
    without = [member for member, gpu in enumerate(gpus) if not gpu]
    if without:
        raise CollectiveError(f"backend 'nccl' is unavailable: {who} {without} have no GPU (create "
                              "the actors with num_gpus=..., or declare GPUs with "
                              "HPCRAY_NUM_GPUS); use backend='mpi' for host memory")
    if forced == STAGED:
        return GroupPath(STAGED, "host staging forced (HPCRAY_COLLECTIVE_GPU_PATH=staged)")
    shared = shared_gpus(gpus)
    if shared and forced != NCCL:
        where = "; ".join(f"{who} {members} share GPU {gpu}" for gpu, members in shared.items())
        return GroupPath(STAGED, f"{where} (NCCL needs one GPU per member)")
    if nccl_missing:
        return GroupPath(STAGED, f"NCCL is unavailable ({nccl_missing})")
    if shared:
        return GroupPath(NCCL, "NCCL forced (HPCRAY_COLLECTIVE_GPU_PATH=nccl) although GPUs are "
                               "shared")
    return GroupPath(NCCL, f"each of the {len(gpus)} members holds a GPU of its own")


def nccl_reducible(dtype: np.dtype, op: ReduceOp) -> bool:
    """Whether NCCL reduces dtype with op itself (else the group stages that call)."""
    return dtype in NCCL_TYPES and op in NCCL_OPS
