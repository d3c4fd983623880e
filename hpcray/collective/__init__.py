"""Collective communication among actors (Ray's ray.util.collective), over MPI.

Groups are MPI sub-communicators of the job: no new processes, no sockets. Operations
work in place on numpy arrays and torch CPU tensors ("mpi" backend), and on CuPy arrays and
CUDA torch tensors ("nccl" backend: NCCL between distinct GPUs, else staged through host
memory).
"""

from .collective import (
    abort_collective_group,
    allgather,
    allreduce,
    barrier,
    broadcast,
    create_collective_group,
    describe_group,
    destroy_collective_group,
    get_collective_group_size,
    get_rank,
    init_collective_group,
    is_group_initialized,
    mpi_comm,
    recv,
    reduce,
    reducescatter,
    send,
)
from .types import CollectiveError, CollectiveGroupError, CollectiveTimeoutError, ReduceOp

__all__ = ["CollectiveError", "CollectiveGroupError", "CollectiveTimeoutError", "ReduceOp",
           "abort_collective_group", "allgather", "allreduce", "barrier", "broadcast",
           "create_collective_group", "describe_group", "destroy_collective_group",
           "get_collective_group_size", "get_rank", "init_collective_group",
           "is_group_initialized", "mpi_comm", "recv", "reduce", "reducescatter", "send"]
