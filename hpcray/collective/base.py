"""The shape of a collective group; one subclass per backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any

from .types import ReduceOp


class BaseGroup(ABC):
    """A group of ``world_size`` members; this member is ``rank``. Operations are in place."""

    backend = "?"

    def __init__(self, name: str, world_size: int, rank: int):
        self.name = name
        self.world_size = world_size
        self.rank = rank
        self.alive = True
        self.instance = 0  # the rendezvous's id of this incarnation of the group

    @abstractmethod
    def allreduce(self, tensor: Any, op: ReduceOp) -> None: ...

    @abstractmethod
    def reduce(self, tensor: Any, dst_rank: int, op: ReduceOp) -> None: ...

    @abstractmethod
    def broadcast(self, tensor: Any, src_rank: int) -> None: ...

    @abstractmethod
    def allgather(self, tensor_list: list, tensor: Any) -> None: ...

    @abstractmethod
    def reducescatter(self, tensor: Any, tensor_list: list, op: ReduceOp) -> None: ...

    @abstractmethod
    def send(self, tensor: Any, dst_rank: int) -> None: ...

    @abstractmethod
    def recv(self, tensor: Any, src_rank: int) -> None: ...

    @abstractmethod
    def barrier(self) -> None: ...

    @abstractmethod
    def destroy(self) -> None: ...

    @abstractmethod
    def mpi_comm(self) -> AbstractContextManager:
        """The group's MPI communicator for the caller's own MPI calls: see
        hpcray.collective.mpi_comm."""

    def describe(self) -> str:
        """One line saying what this group is and how it moves data."""
        return (f"group {self.name!r}: backend {self.backend!r}, rank {self.rank} of "
                f"{self.world_size}")

    def abort(self, reason: str) -> None:
        """Makes the operation in progress (in another thread) and later ones raise."""

    def lose(self, message: str) -> None:
        """A member died (message: who and why): the operation in progress and every later
        one raise CollectiveGroupError. Called from any thread."""
        self.abort(message)

    def failed(self, exc: BaseException) -> None:
        """An operation raised exc: raises what the caller sees (CollectiveGroupError where
        the backend's library reports a dead member)."""
        raise exc
