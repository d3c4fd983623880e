"""The public functions of hpcray.collective (Ray's ray.util.collective names)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .._private.core import context, hooks
from .base import BaseGroup
from .rendezvous import RENDEZVOUS
from .types import CollectiveError, CollectiveGroupError, CollectiveTimeoutError, ReduceOp

_groups: dict[tuple, BaseGroup] = {}
_groups_lock = threading.Lock()
# this thread's {group name: group}, for speed: a thread serves one actor all its life (the
# actor's own threads) or none (task threads)
_cache = threading.local()
_worker_runtime = None  # a worker rank's runtime lasts as long as its process
# the head's word on this rank's groups that lost a member: {instance: message} (a notice may
# come before its group is made here)
_gone: dict[int, str] = {}


def _runtime():
    global _worker_runtime
    rt = _worker_runtime
    if rt is None:
        rt = context.runtime()
        if rt.rank != 0:
            _worker_runtime = rt
    return rt


def _on_notice(payload: tuple) -> None:
    """The head's notice (in the rank's progress loop): a member of a group instance is gone."""
    instance, message = payload
    with _groups_lock:
        _gone[instance] = message
        groups = [g for g in _groups.values() if g.instance == instance]
    for group in groups:
        group.lose(message)


def _member_key(rt) -> Any:
    """Who is calling: the actor (several actors may share a rank), else the thread."""
    actor = getattr(rt.local, "actor_id", 0)
    return actor if actor else ("thread", threading.get_ident())


def _mpi_group(name, world_size, rank, rt, plan, timeout) -> BaseGroup:
    from .mpi_group import MPIGroup

    return MPIGroup(name, world_size, rank, rt, plan, timeout)


def _gpu_group(name, world_size, rank, rt, plan, timeout) -> BaseGroup:
    from .gpu_group import GPUGroup

    return GPUGroup(name, world_size, rank, rt, plan, timeout)


#: backend name -> constructor(name, world_size, rank, runtime, plan, timeout)
BACKENDS = {"mpi": _mpi_group, "nccl": _gpu_group}


def _check_backend(backend: str) -> str:
    backend = str(getattr(backend, "value", backend)).lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown collective backend {backend!r}; choose one of {sorted(BACKENDS)}")
    return backend


def init_collective_group(world_size: int, rank: int, backend: str = "mpi",
                          group_name: str = "default", timeout_s: float | None = None, *,
                          scope: str = "") -> None:
    """Called by each member (an actor): joins the group once all world_size members have.

    Raises CollectiveTimeoutError naming the ranks that did not join within the timeout
    (``HPCRAY_COLLECTIVE_TIMEOUT``, default 180 s, or ``timeout_s``). Group names are the
    job's: members of one ``scope`` meet only each other, so several gangs may form groups of
    the same name at once (Train's trainers in a Tune sweep each form "default").
    """
    backend = _check_backend(backend)
    rt = _runtime()
    if rt.rank == 0:
        raise CollectiveError("collective groups are formed by actors or tasks on worker ranks, "
                              "not by the driver; use create_collective_group(actors, ...)")
    key = _member_key(rt)
    with _groups_lock:
        old = _groups.get((key, group_name))
        if old is not None and old.instance not in _gone:
            raise CollectiveError(f"group {group_name!r} is already initialized in this actor")
    if old is not None:  # its member died (this actor itself, restarted here): a new one
        _drop(key, group_name)
    timeout = float(timeout_s if timeout_s is not None else rt.config.collective_timeout)
    meet = f"{group_name}@{scope}" if scope else group_name
    deadline = time.monotonic() + timeout
    delay = 0.0005
    hooks.on_notice(RENDEZVOUS, _on_notice)
    while True:
        try:
            state = rt.request("service", RENDEZVOUS, "join", meet, world_size, rank, backend,
                               rt.rank, key)
        except CollectiveGroupError as exc:
            raise CollectiveGroupError(
                f"{exc}. Group {group_name!r} cannot form: form it again with live actors "
                "(after destroy_collective_group on the driver, for a group made with "
                "create_collective_group)") from None
        if state["state"] == "go":
            break
        if time.monotonic() > deadline:
            rt.request("service", RENDEZVOUS, "withdraw", meet, key)
            missing = state.get("missing")
            why = (f"rank(s) {missing} did not join" if missing else
                   "the group waited for another group sharing its MPI ranks to be created")
            raise CollectiveTimeoutError(f"group {group_name!r}: rank {rank} waited {timeout:g} s "
                                         f"for the group to form: {why}")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    try:
        group = BACKENDS[backend](group_name, world_size, rank, rt, state, timeout)
    except BaseException:
        # free the ranks for other groups and the name for a new attempt
        rt.request("service", RENDEZVOUS, "created", state["instance"], rank)
        rt.request("service", RENDEZVOUS, "leave", state["instance"], rank)
        raise
    rt.request("service", RENDEZVOUS, "created", state["instance"], rank)
    with _groups_lock:
        _groups[(key, group_name)] = group
        gone = _gone.get(group.instance)
    if gone:
        group.lose(gone)


def create_collective_group(actors: list, world_size: int, ranks: list[int],
                            backend: str = "mpi", group_name: str = "default") -> None:
    """From the driver: declares that actors[i] is rank ranks[i] of the group.

    Each actor joins on its first collective call on group_name (as in Ray).
    """
    from ..actor import ActorHandle

    backend = _check_backend(backend)
    actors = list(actors)
    ranks = list(ranks)
    if len(actors) != world_size or len(ranks) != world_size:
        raise ValueError(f"need world_size={world_size} actors and ranks, got {len(actors)} "
                         f"actors and {len(ranks)} ranks")
    if sorted(ranks) != list(range(world_size)):
        raise ValueError(f"ranks must be a permutation of 0..{world_size - 1}, got {ranks}")
    if any(not isinstance(a, ActorHandle) for a in actors):
        raise TypeError("actors must be actor handles")
    _runtime().request("service", RENDEZVOUS, "declare", group_name,
                       {a._actor_id: r for a, r in zip(actors, ranks)}, world_size, backend)


def destroy_collective_group(group_name: str = "default") -> None:
    """In a member: leaves the group and frees its communicator. On the driver: forgets a
    group declared with create_collective_group."""
    rt = _runtime()
    if not _drop(_member_key(rt), group_name) and rt.rank == 0:
        rt.request("service", RENDEZVOUS, "destroy", group_name)


def _drop(key: Any, group_name: str) -> bool:
    """Leaves the member's group and frees its communicator; False if it had none."""
    with _groups_lock:
        group = _groups.pop((key, group_name), None)
    if group is None:
        return False
    group.alive = False
    with _groups_lock:
        if not any(g.instance == group.instance for g in _groups.values()):
            _gone.pop(group.instance, None)
    group.destroy()
    return True


def abort_collective_group(group_name: str = "default", reason: str = "aborted") -> None:
    """Makes this member's operation in progress on the group (in another thread) and every
    later one raise CollectiveError(reason); nothing if this member has no such group."""
    group = _lookup(group_name)
    if group is not None:
        group.abort(reason)


def _lookup(group_name: str) -> BaseGroup | None:
    rt = _runtime()
    key = _member_key(rt)
    with _groups_lock:
        return _groups.get((key, group_name))


def _group(group_name: str) -> BaseGroup:
    """This member's group; joins a group the driver declared on first use."""
    groups = getattr(_cache, "groups", None)
    if groups is not None:
        group = groups.get(group_name)
        if group is not None and group.alive:
            return group
    rt = _runtime()
    group = _lookup(group_name)
    if group is None:
        actor = getattr(rt.local, "actor_id", 0)
        declared = rt.request("service", RENDEZVOUS, "lookup", group_name, actor) if actor else None
        if declared is None:
            raise CollectiveError(f"collective group {group_name!r} is not initialized here: "
                                  "call init_collective_group in each member, or "
                                  "create_collective_group from the driver")
        world_size, rank, backend = declared
        init_collective_group(world_size, rank, backend, group_name)
        group = _lookup(group_name)
    if groups is None:
        groups = _cache.groups = {}
    groups[group_name] = group
    return group


def is_group_initialized(group_name: str = "default") -> bool:
    return _lookup(group_name) is not None


def describe_group(group_name: str = "default") -> str:
    """One line on this member's group: backend, rank, and for "nccl" the path it chose
    ("nccl", or "staged" through host memory) and why; "" if the caller is not a member."""
    group = _lookup(group_name)
    return group.describe() if group is not None else ""


def get_rank(group_name: str = "default") -> int:
    """This member's rank in the group, or -1 if it is not a member."""
    group = _lookup(group_name)
    return group.rank if group is not None else -1


def get_collective_group_size(group_name: str = "default") -> int:
    """The group's size, or -1 if the caller is not a member."""
    group = _lookup(group_name)
    return group.world_size if group is not None else -1


def _run(group_name: str, op: str, *args: Any) -> None:
    """Runs one of this member's group operations: a failure its library reports for a dead
    member becomes CollectiveGroupError (the group's failed())."""
    group = _group(group_name)
    try:
        getattr(group, op)(*args)
    except RuntimeError as exc:  # (mpi4py's MPI.Exception is one)
        group.failed(exc)


def allreduce(tensor: Any, group_name: str = "default", op: ReduceOp = ReduceOp.SUM) -> Any:
    """Reduces tensor across the group, in place on every member; returns it."""
    _run(group_name, "allreduce", tensor, op)
    return tensor


def reduce(tensor: Any, dst_rank: int = 0, group_name: str = "default",
           op: ReduceOp = ReduceOp.SUM) -> Any:
    """Reduces tensor across the group into dst_rank's tensor (others are unchanged)."""
    _run(group_name, "reduce", tensor, dst_rank, op)
    return tensor


def broadcast(tensor: Any, src_rank: int = 0, group_name: str = "default") -> Any:
    """Copies src_rank's tensor into every member's tensor."""
    _run(group_name, "broadcast", tensor, src_rank)
    return tensor


def allgather(tensor_list: list, tensor: Any, group_name: str = "default") -> list:
    """Fills tensor_list[i] with rank i's tensor, on every member."""
    _run(group_name, "allgather", tensor_list, tensor)
    return tensor_list


def reducescatter(tensor: Any, tensor_list: list, group_name: str = "default",
                  op: ReduceOp = ReduceOp.SUM) -> Any:
    """tensor on rank r becomes the reduction of every member's tensor_list[r]."""
    _run(group_name, "reducescatter", tensor, tensor_list, op)
    return tensor


def send(tensor: Any, dst_rank: int, group_name: str = "default") -> None:
    """Sends tensor to dst_rank, which must call recv with a matching tensor."""
    _run(group_name, "send", tensor, dst_rank)


def recv(tensor: Any, src_rank: int, group_name: str = "default") -> Any:
    """Receives into tensor what src_rank sends."""
    _run(group_name, "recv", tensor, src_rank)
    return tensor


@contextmanager
def mpi_comm(group_name: str = "default") -> Iterator[Any]:
    """This member's MPI communicator over the group (an ``mpi4py.MPI.Comm`` whose rank i is
    group rank i, apart from the group's own traffic), for mpi4py code among the members:
    parallel HDF5 through h5py, an MPI library, MPI calls hpcray lacks. Every member enters
    the block for collective MPI calls, as MPI requires.

    Inside the block the caller holds its rank's MPI lock: hpcray's traffic on that rank
    (object transfers, other actors' calls and collectives there) waits until the block ends,
    so make no hpcray calls inside it. The head is told not to expect heartbeats meanwhile.
    """
    with _group(group_name).mpi_comm() as comm:
        yield comm


def barrier(group_name: str = "default") -> None:
    """Returns once every member called barrier."""
    _run(group_name, "barrier")
