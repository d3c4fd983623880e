"""The "nccl" backend: collectives on device arrays (CuPy arrays, CUDA torch tensors).

Members that each hold a GPU of their own run NCCL (``cupy.cuda.nccl``) on the caller's
current stream; NCCL's unique id travels in the group's MPI header round, never through
a socket. Members sharing a GPU (NCCL refuses them), or a job without NCCL, stage device
memory through pinned host buffers and run the "mpi" backend's collectives on it. Device
pointers never reach MPI. Either way every call first passes the MPI group's header round,
so mismatched calls, bad arguments and missing members fail as on the "mpi" backend.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import numpy as np

from .._private.device.arrays import DeviceArray, as_device
from .._private.device.transfer import where
from .arrays import Buffer
from .base import BaseGroup
from .gpu_path import NCCL, NCCL_OPS, NCCL_TYPES, NCCL_UINT8, STAGED, GroupPath, choose_group_path
from .header import (
    ALLGATHER,
    ALLREDUCE,
    BARRIER,
    BROADCAST,
    REDUCE,
    REDUCESCATTER,
    validate_reduce,
)
from .mpi_group import MPIGroup
from .types import CollectiveError, CollectiveTimeoutError, ReduceOp

_D2D = 3
_UNIQUE_ID_BYTES = 128
_DEVICE = 0  # a rank's own GPU is CUDA device 0 (its CUDA_VISIBLE_DEVICES lists it first)


def nccl_missing() -> str | None:
    """Why NCCL cannot run in this process, or None when it can."""
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        return f"CuPy is not installed: {exc}"
    if not getattr(nccl, "available", False):
        return "CuPy finds no NCCL library"
    try:
        nccl.get_version()
    except Exception as exc:  # noqa: BLE001 - any failure of the library means no NCCL
        return f"NCCL does not load: {exc}"
    return None


class GPUGroup(BaseGroup):
    """A collective group on device arrays; ``path`` says how it moves them ("nccl" or
    "staged") and ``path_reason`` why."""

    backend = "nccl"

    def __init__(self, name: str, world_size: int, rank: int, runtime, plan: dict,
                 timeout: float):
        super().__init__(name, world_size, rank)
        forced = runtime.config.collective_gpu_path
        gpus = [where(runtime.ranks[m]).gpu for m in plan["mpi_ranks"]]
        self.choice = choose_group_path(gpus, None if forced == STAGED else nccl_missing(), forced)
        self.mpi = MPIGroup(name, world_size, rank, runtime, plan, timeout, buffer=self._stage)
        self.instance = self.mpi.instance
        self.call_lock = threading.Lock()  # one operation at a time per member
        self.comm = None
        if self.choice.path == NCCL:
            self.comm = self._connect()

    @property
    def path(self) -> str:
        return self.choice.path

    @property
    def path_reason(self) -> str:
        return self.choice.reason

    def describe(self) -> str:
        return (f"group {self.name!r}: backend 'nccl', rank {self.rank} of {self.world_size}, "
                f"path {self.path}: {self.path_reason}")

    # -- forming the NCCL communicator -----------------------------------------------------
    def _connect(self):
        """The NCCL communicator, or None after falling back to staging (every member alike)."""
        from cupy.cuda import nccl

        mpi = self.mpi
        uid = np.zeros(_UNIQUE_ID_BYTES, np.int8)
        error: Exception | None = None
        if self.rank == 0:
            try:
                uid[:] = np.frombuffer(_id_bytes(nccl.get_unique_id()), np.int8)
            except Exception as exc:  # noqa: BLE001 - every member falls back below
                error = exc
        try:  # rank 0's id rides in a header round, as a broadcast's small data does
            ids = mpi._round(BROADCAST, uid, root=0, inline=uid if self.rank == 0 else None,
                             bad=error is not None)
        except CollectiveTimeoutError:
            raise
        except CollectiveError:
            return self._fall_back(f"rank 0 could not make NCCL's unique id: "
                                   f"{error or 'see rank 0'}")
        uid[:] = ids[0]
        made: dict[str, Any] = {}

        def init() -> None:
            import cupy

            try:
                cupy.cuda.runtime.setDevice(_DEVICE)
                made["comm"] = _communicator(nccl, self.world_size, uid, self.rank)
            except Exception as exc:  # noqa: BLE001 - reported to every member below
                made["error"] = exc

        # in a thread: a member whose peers failed would wait in ncclCommInitRank for ever
        thread = threading.Thread(target=init, name=f"hpcray-nccl-{self.name}", daemon=True)
        thread.start()
        thread.join(mpi.timeout / 2)
        state = np.array([0 if "comm" in made else 1 if "error" in made else 2], np.int64)
        states = mpi._round(BARRIER, state, inline=state)
        failed = [r for r in range(self.world_size) if states[r][0]]
        if not failed:
            return made["comm"]
        if "comm" in made:
            made["comm"].abort()
        here = (f"; here: {made['error']}" if "error" in made else
                "; here: it did not form" if "comm" not in made else "")
        return self._fall_back(f"the NCCL communicator failed on rank(s) {failed}{here}")

    def _fall_back(self, why: str) -> None:
        self.choice = GroupPath(STAGED, f"{why}; staging through host memory instead")
        if self.rank == 0:
            print(f"hpcray: collective group {self.name!r}: {self.choice.reason}", file=sys.stderr)

    # -- host staging (the MPI group calls this for every tensor it is given) ---------------
    def _stage(self, x, writable: bool, what: str = "tensor", read: bool = True) -> Buffer:
        """A pinned host copy of device array x; the Buffer's done() copies it back."""
        d = as_device(x, writable, what)
        host = d.lib.pinned(d.nbytes).view(d.dtype).reshape(d.shape)
        if read:
            d.download(host)
        if not writable:
            return Buffer(host)

        def copy_back() -> None:
            d.upload(host)
            d.done()

        return Buffer(host, copy_back)

    # -- NCCL ------------------------------------------------------------------------------
    def _on_nccl(self, tensor: Any, writable: bool, op=None) -> DeviceArray | None:
        """tensor as a DeviceArray when this call runs on NCCL; None when it is staged (the
        MPI group then converts and checks it). Depends only on what the header round
        compares, so every member decides alike."""
        if self.comm is None:
            return None
        try:
            d = as_device(tensor, writable)
            if op is not None and (d.dtype not in NCCL_TYPES or ReduceOp(op) not in NCCL_OPS):
                return None
        except (TypeError, ValueError):
            return None
        return d

    def _check(self, kind: int, d: DeviceArray, op=None, root: int | None = None,
               what: str = "dst_rank") -> ReduceOp | None:
        """Checks one NCCL call's arguments (refusing bad ones as the MPI group does), then
        runs the header round."""
        mpi = self.mpi
        try:
            self._check_device(d, "tensor")
            if op is not None:
                op = validate_reduce(d.dtype, op)
            if root is not None:
                mpi._check_rank(root, what)
        except (TypeError, ValueError) as exc:
            mpi._refuse(kind, exc)
        mpi._round(kind, d.like(), -1 if op is None else op, -1 if root is None else root)
        return op

    def _check_device(self, d: DeviceArray, what: str) -> None:
        if d.device != _DEVICE:
            raise TypeError(f"{what} is on CUDA device {d.device}; group {self.name!r} runs NCCL "
                            f"on device {_DEVICE}, this rank's own GPU")

    def _launch(self, what: str, d: DeviceArray, *calls) -> None:
        """Queues calls(stream) on d's current stream and waits for them (the group's timeout
        bounds the wait; a failed or aborted group raises)."""
        import cupy

        mpi = self.mpi
        stream = d.stream()
        try:
            for call in calls:
                call(stream)
            event = cupy.cuda.Event(disable_timing=True)
            cupy.cuda.runtime.eventRecord(event.ptr, stream)
        except Exception as exc:  # noqa: BLE001 - NcclError, CUDA errors: the group is broken
            self._fail(what, f"NCCL failed: {exc}")
        start = time.monotonic()
        backoff = mpi.backoff
        backoff.reset()
        while not event.done:
            if mpi.broken:  # abort() from another thread
                self._fail(what, mpi.broken)
            try:
                self.comm.check_async_error()
            except Exception as exc:  # noqa: BLE001 - as above
                self._fail(what, f"NCCL failed: {exc}")
            if time.monotonic() - start > mpi.timeout:
                self._fail(what, f"NCCL did not complete within {mpi.timeout:g} s although ranks "
                                 f"{list(range(self.world_size))} all arrived", timeout=True)
            backoff.sleep()

    def _fail(self, what: str, why: str, timeout: bool = False) -> None:
        comm, self.comm = self.comm, None
        if comm is not None:
            comm.abort()
        if self.mpi.lost:  # a member died
            self.mpi._usable()  # raises CollectiveGroupError
        msg = f"group {self.name!r}: {what} (call {self.mpi.seq}): {why}"
        self.mpi.broken = self.mpi.broken or msg
        error = CollectiveTimeoutError if timeout else CollectiveError
        raise error(f"{msg}. The group cannot be used any more: call "
                    f"destroy_collective_group({self.name!r}) and create it again")

    def _average(self, d: DeviceArray, op) -> None:
        """AVG runs as SUM, then a division on the device (NCCL 2.28's own AVG left the tail
        of a 70,000-float reducescatter unwritten on an H200)."""
        if ReduceOp(op) == ReduceOp.AVG:
            d.divide(self.world_size)

    def _scratch(self, nbytes: int) -> tuple[Any, int]:
        """(device buffer, its address): the caller holds the buffer until NCCL is done."""
        import cupy

        buf = cupy.empty(max(nbytes, 1), cupy.uint8)
        return buf, buf.data.ptr

    # -- operations ------------------------------------------------------------------------
    def allreduce(self, tensor: Any, op: ReduceOp = ReduceOp.SUM) -> None:
        with self.call_lock:
            d = self._on_nccl(tensor, True, op)
            if d is None:
                return self.mpi.allreduce(tensor, op)
            op = self._check(ALLREDUCE, d, op)
            if d.nbytes:
                count = d.nbytes // d.dtype.itemsize
                self._launch("allreduce", d, lambda s: self.comm.allReduce(
                    d.ptr, d.ptr, count, NCCL_TYPES[d.dtype], NCCL_OPS[_summed(op)], s))
                self._average(d, op)
            d.done()

    def reduce(self, tensor: Any, dst_rank: int = 0, op: ReduceOp = ReduceOp.SUM) -> None:
        with self.call_lock:
            root = self.rank == dst_rank
            d = self._on_nccl(tensor, root, op)
            if d is None:
                return self.mpi.reduce(tensor, dst_rank, op)
            op = self._check(REDUCE, d, op, dst_rank)
            if d.nbytes:
                count = d.nbytes // d.dtype.itemsize
                self._launch("reduce", d, lambda s: self.comm.reduce(
                    d.ptr, d.ptr, count, NCCL_TYPES[d.dtype], NCCL_OPS[_summed(op)], dst_rank,
                    s))
                if root:
                    self._average(d, op)
            if root:
                d.done()

    def broadcast(self, tensor: Any, src_rank: int = 0) -> None:
        with self.call_lock:
            root = self.rank == src_rank
            d = self._on_nccl(tensor, not root)
            if d is None:
                return self.mpi.broadcast(tensor, src_rank)
            self._check(BROADCAST, d, root=src_rank, what="src_rank")
            if d.nbytes:
                self._launch("broadcast", d, lambda s: self.comm.broadcast(
                    d.ptr, d.ptr, d.nbytes, NCCL_UINT8, src_rank, s))
            if not root:
                d.done()

    def allgather(self, tensor_list: list, tensor: Any) -> None:
        with self.call_lock:
            d = self._on_nccl(tensor, False)
            if d is None:
                return self.mpi.allgather(tensor_list, tensor)
            try:
                outs = self.mpi._list(tensor_list, d, "tensor_list",
                                      lambda t, what: as_device(t, True, what))
                for i, out in enumerate(outs):
                    self._check_device(out, f"tensor_list[{i}]")
            except (TypeError, ValueError) as exc:
                self.mpi._refuse(ALLGATHER, exc)
            self._check(ALLGATHER, d)
            n = d.nbytes
            if n:
                import cupy

                scratch, gathered = self._scratch(n * self.world_size)
                self._launch("allgather", d,
                             lambda s: self.comm.allGather(d.ptr, gathered, n, NCCL_UINT8, s),
                             *[lambda s, i=i, out=out: cupy.cuda.runtime.memcpyAsync(
                                 out.ptr, gathered + i * n, n, _D2D, s)
                               for i, out in enumerate(outs)])
                del scratch  # (held until NCCL was done with it)
            for out in outs:
                out.done()

    def reducescatter(self, tensor: Any, tensor_list: list, op: ReduceOp = ReduceOp.SUM) -> None:
        with self.call_lock:
            d = self._on_nccl(tensor, True, op)
            if d is None:
                return self.mpi.reducescatter(tensor, tensor_list, op)
            try:
                ins = self.mpi._list(tensor_list, d, "tensor_list",
                                     lambda t, what: as_device(t, False, what))
                for i, part in enumerate(ins):
                    self._check_device(part, f"tensor_list[{i}]")
            except (TypeError, ValueError) as exc:
                self.mpi._refuse(REDUCESCATTER, exc)
            op = self._check(REDUCESCATTER, d, op)
            n = d.nbytes
            if n:
                import cupy

                scratch, parts = self._scratch(n * self.world_size)
                count = n // d.dtype.itemsize
                self._launch("reducescatter", d,
                             *[lambda s, i=i, part=part: cupy.cuda.runtime.memcpyAsync(
                                 parts + i * n, part.ptr, n, _D2D, s)
                               for i, part in enumerate(ins)],
                             lambda s: self.comm.reduceScatter(parts, d.ptr, count,
                                                               NCCL_TYPES[d.dtype],
                                                               NCCL_OPS[_summed(op)], s))
                del scratch  # (held until NCCL was done with it)
                self._average(d, op)
            d.done()

    def send(self, tensor: Any, dst_rank: int) -> None:
        with self.call_lock:
            d = self._on_nccl(tensor, False)
            if d is None:
                return self.mpi.send(tensor, dst_rank)
            self.mpi._check_peer(dst_rank, "dst_rank")
            try:
                self._check_device(d, "tensor")
                bad = None
            except TypeError as exc:
                bad = exc
            if self.mpi._announce(dst_rank, d.like(), bad, inline=False) and d.nbytes:
                self._launch(f"send to rank {dst_rank}", d, lambda s: self.comm.send(
                    d.ptr, d.nbytes, NCCL_UINT8, dst_rank, s))

    def recv(self, tensor: Any, src_rank: int) -> None:
        with self.call_lock:
            d = self._on_nccl(tensor, True)
            if d is None:
                return self.mpi.recv(tensor, src_rank)
            self.mpi._check_peer(src_rank, "src_rank")
            self._check_device(d, "tensor")
            _, reply = self.mpi._expect(src_rank, d.like())
            self.mpi._wait([reply], f"recv from rank {src_rank}", peer=src_rank)
            if d.nbytes:
                self._launch(f"recv from rank {src_rank}", d, lambda s: self.comm.recv(
                    d.ptr, d.nbytes, NCCL_UINT8, src_rank, s))
            d.done()

    def barrier(self) -> None:
        with self.call_lock:
            self.mpi.barrier()

    # -- life ------------------------------------------------------------------------------
    def mpi_comm(self):
        return self.mpi.mpi_comm()

    def abort(self, reason: str) -> None:
        self.mpi.abort(reason)

    def lose(self, message: str) -> None:
        self.mpi.lose(message)

    def failed(self, exc: BaseException) -> None:
        self.mpi.failed(exc)

    def destroy(self) -> None:
        with self.call_lock:
            comm, self.comm = self.comm, None
            if comm is not None:
                if self.mpi.broken:
                    comm.abort()
                else:
                    comm.destroy()
            self.mpi.destroy()


def _id_bytes(uid) -> bytes:
    """NCCL's unique id as 128 bytes (CuPy gives bytes, older releases a tuple of chars)."""
    if isinstance(uid, (bytes, bytearray)):
        return bytes(uid)
    return np.asarray(uid, np.int64).astype(np.int8).tobytes()


def _communicator(nccl, world_size: int, uid: np.ndarray, rank: int):
    """NcclCommunicator from the id's bytes, in the form this CuPy takes."""
    try:
        return nccl.NcclCommunicator(world_size, uid.tobytes(), rank)
    except (TypeError, ValueError, OverflowError):  # a CuPy that wants a tuple of chars
        return nccl.NcclCommunicator(world_size, tuple(int(b) for b in uid), rank)


def _summed(op) -> ReduceOp:
    """The op NCCL runs: AVG as SUM (divided afterwards)."""
    op = ReduceOp(op)
    return ReduceOp.SUM if op == ReduceOp.AVG else op
