"""The "mpi" backend: an MPI sub-communicator of the job's communicator per group.

No new processes and no sockets: members are actors on worker ranks, and their
communicator comes from MPI_Comm_create_group over their ranks (see rendezvous.py
for why creations are granted one group at a time per rank). Every operation is a
nonblocking MPI collective tested in a loop that takes the rank's transport lock only for
each test, so the rank keeps serving messages and heartbeats while a member waits.
"""

from __future__ import annotations

import ctypes
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
from mpi4py import MPI

from .._private.core.backoff import Backoff
from .._private.transport.mpi import FAILURE_CLASSES, failed_ranks
from .arrays import Buffer, as_buffer
from .base import BaseGroup
from .header import (
    ALLGATHER,
    ALLREDUCE,
    BAD,
    BARRIER,
    BROADCAST,
    DIMS,
    DTYPE,
    HEADER_BYTES,
    HEADER_WORDS,
    INLINE,
    KIND,
    NBYTES,
    NDIM,
    OP_NAMES,
    REDUCE,
    REDUCESCATTER,
    ROOT,
    SEND,
    SEQ,
    SLOT,
    check_headers,
    describe,
    make_header,
    mpi_reducible,
    reduce_stack,
    reducer,
    validate_reduce,
)
from .rendezvous import RENDEZVOUS
from .types import CollectiveError, CollectiveGroupError, CollectiveTimeoutError, ReduceOp

#: Open MPI (4.1's AVX reductions) saturates 8- and 16-bit integer sums: numpy reduces those
NARROW_SUMS_SATURATE = MPI.Get_library_version().startswith("Open MPI")
_MPI_OPS = {ReduceOp.SUM: MPI.SUM, ReduceOp.AVG: MPI.SUM, ReduceOp.PRODUCT: MPI.PROD,
            ReduceOp.MIN: MPI.MIN, ReduceOp.MAX: MPI.MAX}
TAG_HEADER, TAG_REPLY, TAG_DATA = 1, 2, 3
SPIN_TESTS = 50  # tests a wait makes, holding the lock, before it starts yielding the core
SHARED_SPIN_TESTS = 10  # the same where the group's members on a node outnumber its cores
# seconds a wait then keeps yielding the core before it sleeps: a partner that lost its core
# for a time slice is answered as soon as it arrives, not after a sleep
YIELD_TIME = 0.02
# tests per turn on the core while yielding: what another core sends may be on its way (4
# members on 2 cores: about a third fewer calls over 50 us than with 1 test per turn)
_TURN = range(5)
_TURNS = range(16)  # turns between two looks at the clock
# MPI-4 persistent collectives: the header round's allgather is set up once per group
PERSISTENT = MPI.Get_version() >= (4, 0) and hasattr(MPI.Comm, "Allgather_init")
#: Operations given up on (abort, time-out): their requests, with the buffers mpi4py keeps for
#: them, and their group, whose communicator must outlive them (MPI progress touches them
#: later; freed, they corrupt memory). A broken group is never reused, so this stays small.
_ABANDONED: list[tuple] = []
_pack_seq = struct.Struct("<q").pack_into  # (buffer, offset, seq): a header's SEQ word
_SEQ_AT = SEQ * 8
_MATCH = [KIND, DTYPE, NDIM, NBYTES, *range(DIMS, HEADER_WORDS)]
#: dtypes the C fast path reduces, by its type code (native byte order only)
FAST_TYPES = {np.dtype(t): code for code, t in enumerate(
    (np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
     np.uint32, np.uint64))}
_MPI_FUNCTIONS: list = []  # (MPI_Start, MPI_Test) addresses, once resolved
#: seconds a member whose MPI reported a dead member (ULFM) waits for the head's word on it,
#: which says more (the member's actor, host and why it died)
HEAD_WORD = 2.0


def _fast_path(slot: bytearray, gathered: bytearray, request, world_size: int,
               spins: int) -> Any:
    """The C fast path over a group's buffers and persistent allgather (see _fastpath.c),
    or None without the extension or a persistent request."""
    if request is None:
        return None
    try:
        from . import _fastpath
    except ImportError:
        return None
    if not _MPI_FUNCTIONS:
        # mpi4py's extension module links the MPI library: its symbols resolve through it
        try:
            lib = ctypes.CDLL(MPI.__file__)
            _MPI_FUNCTIONS.extend(ctypes.cast(f, ctypes.c_void_p).value
                                  for f in (lib.MPI_Start, lib.MPI_Test))
        except (OSError, AttributeError):
            _MPI_FUNCTIONS.extend((None, None))
    if None in _MPI_FUNCTIONS:
        return None
    return _fastpath.Fast(slot, gathered, MPI._addressof(request), *_MPI_FUNCTIONS,
                          world_size, SLOT, HEADER_BYTES, _SEQ_AT, spins)


def _bytes(a: np.ndarray) -> np.ndarray:
    """The bytes of a C-contiguous array, as a uint8 view (any dtype travels as bytes)."""
    return a.reshape(-1).view(np.uint8)


def host_buffer(x, writable: bool, what: str = "tensor", read: bool = True) -> Buffer:
    """The "mpi" backend's view of what users pass: numpy arrays and torch CPU tensors.

    read=False: the call only writes x (a backend that copies x may skip reading it)."""
    return as_buffer(x, writable, what)


def _c_strides(shape: tuple, itemsize: int) -> tuple:
    strides = []
    for dim in reversed(shape):
        strides.append(itemsize)
        itemsize *= dim
    return tuple(reversed(strides))


class _Call:
    """What one call signature (operation, arguments' dtype and shape) needs each time: its
    header with seq 0 and, where its data travels in the slot, the slot's view of this
    member's data, one view per rank of the data in the receive buffer and, for reductions,
    the function that reduces those views into a tensor."""

    __slots__ = ("bad", "fast", "header", "inline", "kind", "op", "parts", "reduce")

    def __init__(self, kind: int, op: int, header: bytes, inline: np.ndarray | None,
                 parts: tuple | None, bad: bool):
        self.kind = kind
        self.op = op
        self.header = header
        self.inline = inline
        self.parts = parts
        self.bad = bad
        self.reduce = (reducer(parts, op) if parts is not None and kind in (ALLREDUCE, REDUCE)
                       else None)
        self.fast: tuple | None = None  # (op, type code, reduce here) for the C fast path


class MPIGroup(BaseGroup):
    """A collective group over an MPI sub-communicator; this member is ``rank``.

    ``buffer`` turns what users pass into host Buffers (default: host_buffer); the GPU
    backend's host staging passes its own."""

    backend = "mpi"

    def __init__(self, name: str, world_size: int, rank: int, runtime, plan: dict,
                 timeout: float, buffer: Callable[..., Buffer] = host_buffer):
        super().__init__(name, world_size, rank)
        self.buffer = buffer
        self._takes_numpy = buffer is host_buffer  # (the GPU backend stages device arrays)
        self.runtime = runtime
        self.lock = runtime.transport.lock
        self.timeout = timeout
        self.diag_after = min(1.0, timeout / 4)
        self.instance = plan["instance"]
        self.mpi_ranks = plan["mpi_ranks"]
        self.seq = 0
        self.p2p_seq: dict[tuple[int, int], int] = {}
        self.broken: str | None = None
        self.lost: str | None = None  # a member died: what the survivors are told
        self.call_lock = threading.Lock()  # one operation at a time per member
        # members sharing this node's cores with more members yield sooner: the one they
        # wait for may need this core; otherwise partners are running and answer soon
        here = sum(runtime.ranks[r].host == runtime.host for r in self.mpi_ranks)
        self.spin_tests = SHARED_SPIN_TESTS if here > (os.cpu_count() or 1) else SPIN_TESTS
        self._spins = range(self.spin_tests)
        self.yield_time = max(runtime.config.spin_time, YIELD_TIME)
        self.backoff = Backoff(0.0, runtime.config.backoff_max)
        self._relax = runtime.backoff.relax
        # one round's buffers, reused: this member's slot (header, then inline data) and all
        self._slot = bytearray(SLOT)
        self._gathered = bytearray(world_size * SLOT)
        self._slots = np.frombuffer(self._gathered, np.uint8).reshape(world_size, SLOT)
        self._calls: dict[tuple, _Call] = {}  # call signature -> _Call
        self._written: _Call | None = None  # whose header the slot holds
        self._others = range(SLOT, world_size * SLOT, SLOT)  # where the others' headers start
        parent = runtime.transport.comm
        with self.lock:
            world_group = parent.Get_group()
            group = world_group.Incl(self.mpi_ranks)
            if runtime.transport.ulfm:
                # once a rank died, Open MPI's Create_group over the job's communicator fails
                # (ERR_PROC_FAILED) among live ranks too; MPI-4's Create_from_group needs none
                self.comm = MPI.Intracomm.Create_from_group(
                    group, f"hpcray.collective.{self.instance}", errhandler=MPI.ERRORS_RETURN)
            else:
                self.comm = parent.Create_group(group, plan["tag"])
            group.Free()
            world_group.Free()
            self._gather = (self.comm.Allgather_init(self._slot, self._slots) if PERSISTENT
                            else None)
            self.user_comm = self.comm.Dup()  # mpi_comm()'s: apart from the group's traffic
        self._fast = (_fast_path(self._slot, self._gathered, self._gather, world_size,
                                 self.spin_tests)
                      if runtime.config.collective_fastpath and self._takes_numpy else None)

    # -- waiting ---------------------------------------------------------------------------
    def _wait(self, reqs: list, what: str, seq: int = 0, peer: int | None = None,
              payload: bool = False, spun: bool = False) -> None:
        try:
            self._wait_on(reqs, what, seq, peer, payload, spun)
        except MPI.Exception:  # (ULFM: a member died) MPI may still touch reqs and buffers
            _ABANDONED.append((self, reqs))
            raise

    def _wait_on(self, reqs: list, what: str, seq: int, peer: int | None, payload: bool,
                 spun: bool) -> None:
        """Tests reqs until done, releasing the lock between tests; raises on timeout.

        First spin_tests tests under one lock hold (spun: the caller made them), then tests
        that yield the core in between: a partner that lost its core, or shares this one,
        is answered as soon as it arrives. After YIELD_TIME the tests sleep in between
        (Backoff), except for payloads: every member is there, and data moves only while
        someone tests."""
        lock = self.lock
        test = reqs[0].Test if len(reqs) == 1 else partial(MPI.Request.Testall, reqs)
        if not spun:
            with lock:
                for _ in self._spins:
                    if test():
                        return
        start = time.monotonic()
        sleep_from = math.inf if payload else start + self.yield_time
        # a payload's data moves while the members take turns on the cores: 1 test per turn
        pause, turns, turn = os.sched_yield, _TURNS, range(1) if payload else _TURN
        said = False
        while True:
            for _ in turns:
                pause()
                with lock:
                    for _ in turn:
                        if test():
                            return
            if self.broken:  # abort() from another thread
                _ABANDONED.append((self, reqs))
                self._usable()
            now = time.monotonic()
            if not said and peer is None and not payload and now - start > self.diag_after:
                said = True
                self._rendezvous("arrive", self.instance, seq, self.rank)
            if now - start > self.timeout:
                _ABANDONED.append((self, reqs))
                self._timed_out(what, seq, peer, payload)
            if now > sleep_from:
                sleep_from = math.inf
                pause, turns, turn = self.backoff.sleep, range(1), range(1)
                self.backoff.reset()

    def _timed_out(self, what: str, seq: int, peer: int | None, payload: bool) -> None:
        where = f"group {self.name!r}: {what}"
        if peer is not None:
            msg = (f"{where} with rank {peer} did not complete within {self.timeout:g} s: rank "
                   f"{peer} did not make the matching call")
        elif payload:
            msg = f"{where} (call {seq}) did not complete within {self.timeout:g} s"
        else:
            time.sleep(self.diag_after)  # members that arrived late tell the head meanwhile
            arrived = self._rendezvous("arrivals", self.instance, seq)
            missing = [r for r in range(self.world_size) if r not in arrived]
            msg = (f"{where} (call {seq}) timed out after {self.timeout:g} s: rank(s) {missing} "
                   f"did not arrive (ranks {arrived} did)")
        self.broken = msg
        raise CollectiveTimeoutError(msg + f". The group cannot be used any more: call "
                                     f"destroy_collective_group({self.name!r}) and create it again")

    def _rendezvous(self, action: str, *args) -> Any:
        return self.runtime.request("service", RENDEZVOUS, action, *args)

    def _usable(self) -> None:
        if self.lost:
            raise CollectiveGroupError(
                f"{self.lost}. Group {self.name!r} cannot be used any more: call "
                f"destroy_collective_group({self.name!r}) in each surviving member, then form "
                "the group again with live actors")
        if self.broken:
            raise CollectiveError(f"group {self.name!r} is unusable after an earlier failure: "
                                  f"{self.broken}")

    # -- the header round ------------------------------------------------------------------
    def _round(self, kind: int, array: np.ndarray | None, reduce_op: int = -1, root: int = -1,
               inline: np.ndarray | None = None, bad: bool = False) -> tuple | None:
        """Gathers every member's header (and small data); raises if the calls differ.

        Returns the members' data, shaped like inline (else array), as a tuple of views of
        the receive buffer, one per rank, that the next round overwrites; None where it
        does not fit."""
        key = ((kind, reduce_op, root, bad) if array is None else
               (kind, reduce_op, root, bad, array.dtype, array.shape))
        call = self._calls.get(key)
        if call is None:
            call = self._new_call(key, array, inline)
        return self._exchange(call, inline)

    def _begin(self, call: _Call) -> int:
        """A round of call starts: the slot gets its header; returns its call number."""
        if self.broken:
            self._usable()
        self.seq = seq = self.seq + 1
        if self._written is not call:
            self._slot[:HEADER_BYTES] = call.header
            self._written = call
        self._relax()  # the rank's progress loop: it would take the core and the GIL meanwhile
        return seq

    def _exchange(self, call: _Call, inline: np.ndarray | None = None) -> tuple | None:
        """The header round of a known call signature: see _round."""
        seq = self._begin(call)
        if inline is not None:
            call.inline[...] = inline
        _pack_seq(self._slot, _SEQ_AT, seq)
        with self.lock:  # one hold starts the round and makes _wait's first tests
            req = self._gather
            if req is None:
                req = self.comm.Iallgather(self._slot, self._slots)
            else:
                req.Start()
            test = req.Test
            for _ in self._spins:
                if test():
                    break
            else:
                test = None
        if test is None:
            self._wait([req], OP_NAMES[call.kind], seq, spun=True)
        gathered = self._gathered
        first = gathered[:HEADER_BYTES]
        for i in self._others:
            if not gathered.startswith(first, i):
                break
        else:
            if not call.bad:
                return call.parts
        # raises: the calls differ, or every member's arguments were bad
        check_headers(self._slots[:, :HEADER_BYTES].view(np.int64), self.name)
        return None

    def _fast_call(self, call: _Call, tensor: np.ndarray) -> None:
        """_exchange and, where this member receives the result, the reduction of a small
        C-contiguous, aligned numpy call seen before, in C (_fastpath.c)."""
        seq = self._begin(call)
        op, code, here = call.fast
        with self.lock:
            done = self._fast.call(tensor, seq, op, code, here)
        if not done:
            self._wait([self._gather], OP_NAMES[call.kind], seq, spun=True)
            done = self._fast.finish(tensor, op, code, here)
        if done < 0:  # raises: the calls differ
            check_headers(self._slots[:, :HEADER_BYTES].view(np.int64), self.name)

    def _small_reduction(self, call: _Call, tensor: np.ndarray, here: bool) -> None:
        """A cached reduction's round (see _cached), reduced into tensor where here: in C
        where the call allows, else in Python."""
        if call.fast is not None and tensor.flags.aligned:
            self._fast_call(call, tensor)
        else:
            self._exchange(call, tensor)
            if here:
                call.reduce(tensor)

    def _new_call(self, key: tuple, array: np.ndarray | None,
                  inline: np.ndarray | None) -> _Call:
        """The _Call of a call signature, cached."""
        kind, reduce_op, root, bad = key[:4]
        header = make_header(kind, 0, array, reduce_op, root, bad).tobytes()
        like = inline if inline is not None else array
        mine = parts = None
        if like is not None and like.nbytes <= INLINE:
            mine = np.ndarray(like.shape, like.dtype, self._slot, HEADER_BYTES)
            every = np.ndarray((self.world_size, *like.shape), like.dtype, self._slots,
                               HEADER_BYTES, (SLOT, *_c_strides(like.shape, like.itemsize)))
            parts = tuple(every[i, ...] for i in range(self.world_size))  # 0-d: views too
        if len(self._calls) >= 64:
            self._calls.clear()
        call = self._calls[key] = _Call(kind, reduce_op, header, mine, parts, bad)
        code = FAST_TYPES.get(array.dtype) if array is not None else None
        if (self._fast is not None and parts is not None and code is not None
                and kind in (ALLREDUCE, REDUCE) and array.dtype.isnative):
            call.fast = (int(reduce_op), code, kind == ALLREDUCE or root == self.rank)
        return call

    def _cached(self, kind: int, tensor: Any, reduce_op: int = -1, root: int = -1,
                writable: bool = True) -> _Call | None:
        """The call of a small tensor if its signature was seen (and checked) before and it
        is a C-contiguous numpy array, writable if need be, that the group takes as it is:
        nothing to check again."""
        if not self._takes_numpy:
            return None
        try:
            call = self._calls.get((kind, reduce_op, root, False, tensor.dtype, tensor.shape))
        except (AttributeError, TypeError):  # not an array, or an unhashable op or root
            return None
        if call is None or call.parts is None or type(tensor) is not np.ndarray:
            return None
        flags = tensor.flags
        if flags.c_contiguous and (flags.writeable or not writable) and type(root) is int:
            return call
        return None

    def _refuse(self, kind: int, exc: BaseException) -> None:
        """This member's arguments are bad: it still joins the header round so that the
        others fail at once naming it, then raises its own error."""
        try:
            self._round(kind, None, bad=True)
        except CollectiveError:
            pass
        raise exc

    def _payload(self, kind: int, start, *args) -> None:
        """Starts a nonblocking MPI collective, ``start(*args)``, and waits for it."""
        with self.lock:
            req = start(*args)
        self._wait([req], OP_NAMES[kind], self.seq, payload=True)

    def _reduction(self, kind: int, tensor: Any, op, writable: bool = True,
                   root: int | None = None):
        """(buffer, ReduceOp) of a reducing call; bad arguments: see _refuse."""
        try:
            if root is not None:
                self._check_rank(root, "dst_rank")
            buf = self.buffer(tensor, writable)
            return buf, validate_reduce(buf.array.dtype, op)
        except (TypeError, ValueError) as exc:
            self._refuse(kind, exc)

    # -- operations ------------------------------------------------------------------------
    def allreduce(self, tensor: Any, op: ReduceOp = ReduceOp.SUM) -> None:
        call = self._cached(ALLREDUCE, tensor, op)
        if call is not None:
            with self.call_lock:
                self._small_reduction(call, tensor, True)
            return
        with self.call_lock:
            buf, op = self._reduction(ALLREDUCE, tensor, op)
            a = buf.array
            n = self.world_size
            if a.nbytes <= INLINE:
                reduce_stack(self._round(ALLREDUCE, a, op, inline=a), op, a)
            elif mpi_reducible(a.dtype, op, NARROW_SUMS_SATURATE):
                self._round(ALLREDUCE, a, op)
                self._payload(ALLREDUCE, self.comm.Iallreduce, MPI.IN_PLACE, a, _MPI_OPS[op])
                if op is ReduceOp.AVG:
                    a /= n
            else:
                self._round(ALLREDUCE, a, op)
                stack = np.empty((n, *a.shape), a.dtype)
                self._payload(ALLREDUCE, self.comm.Iallgather, _bytes(a), _bytes(stack))
                reduce_stack(stack, op, a)
            buf.done()

    def reduce(self, tensor: Any, dst_rank: int = 0, op: ReduceOp = ReduceOp.SUM) -> None:
        with self.call_lock:
            root = self.rank == dst_rank  # a bad dst_rank: _reduction says so
            call = self._cached(REDUCE, tensor, op, dst_rank, writable=root)
            if call is not None:
                self._small_reduction(call, tensor, root)
                return
            buf, op = self._reduction(REDUCE, tensor, op, writable=root, root=dst_rank)
            a = buf.array
            n = self.world_size
            if a.nbytes <= INLINE:
                parts = self._round(REDUCE, a, op, dst_rank, inline=a)
                if root:
                    reduce_stack(parts, op, a)
            elif mpi_reducible(a.dtype, op, NARROW_SUMS_SATURATE):
                self._round(REDUCE, a, op, dst_rank)
                self._payload(REDUCE, self.comm.Ireduce, MPI.IN_PLACE if root else a,
                              a if root else None, _MPI_OPS[op], dst_rank)
                if root and op is ReduceOp.AVG:
                    a /= n
            else:
                self._round(REDUCE, a, op, dst_rank)
                stack = np.empty((n, *a.shape), a.dtype) if root else None
                self._payload(REDUCE, self.comm.Igather, _bytes(a),
                              _bytes(stack) if root else None, dst_rank)
                if root:
                    reduce_stack(stack, op, a)
            if root:
                buf.done()

    def broadcast(self, tensor: Any, src_rank: int = 0) -> None:
        with self.call_lock:
            call = self._cached(BROADCAST, tensor, root=src_rank, writable=src_rank != self.rank)
            if call is not None:
                if src_rank == self.rank:
                    self._exchange(call, tensor)
                else:
                    np.copyto(tensor, self._exchange(call)[src_rank])
                return
            try:
                self._check_rank(src_rank, "src_rank")
                root = self.rank == src_rank
                buf = self.buffer(tensor, not root, read=root)
                a = buf.array
            except (TypeError, ValueError) as exc:
                self._refuse(BROADCAST, exc)
            if a.nbytes <= INLINE:
                gathered = self._round(BROADCAST, a, root=src_rank, inline=a if root else None)
                if not root:
                    a[...] = gathered[src_rank]
            else:
                self._round(BROADCAST, a, root=src_rank)
                self._payload(BROADCAST, self.comm.Ibcast, _bytes(a), src_rank)
            if not root:
                buf.done()

    def allgather(self, tensor_list: list, tensor: Any) -> None:
        with self.call_lock:
            try:
                a = self.buffer(tensor, False).array
                outs = self._list(tensor_list, a, "tensor_list",
                                  lambda t, what: self.buffer(t, True, what, read=False))
            except (TypeError, ValueError) as exc:
                self._refuse(ALLGATHER, exc)
            n = self.world_size
            if a.nbytes <= INLINE:
                gathered = self._round(ALLGATHER, a, inline=a)
            else:
                self._round(ALLGATHER, a)
                gathered = np.empty((n, *a.shape), a.dtype)
                self._payload(ALLGATHER, self.comm.Iallgather, _bytes(a), _bytes(gathered))
            for out, part in zip(outs, gathered):
                out.array[...] = part
                out.done()

    def reducescatter(self, tensor: Any, tensor_list: list, op: ReduceOp = ReduceOp.SUM) -> None:
        with self.call_lock:
            buf, op = self._reduction(REDUCESCATTER, tensor, op)
            a = buf.array
            try:
                ins = self._list(tensor_list, a, "tensor_list",
                                 lambda t, what: self.buffer(t, False, what))
            except (TypeError, ValueError) as exc:
                self._refuse(REDUCESCATTER, exc)
            n = self.world_size
            send = np.stack([b.array for b in ins])
            if send.nbytes <= INLINE:
                parts = self._round(REDUCESCATTER, a, op, inline=send)
                reduce_stack([p[self.rank] for p in parts], op, a)
            elif mpi_reducible(a.dtype, op, NARROW_SUMS_SATURATE):
                self._round(REDUCESCATTER, a, op)
                self._payload(REDUCESCATTER, self.comm.Ireduce_scatter_block, send, a,
                              _MPI_OPS[op])
                if op is ReduceOp.AVG:
                    a /= n
            else:
                self._round(REDUCESCATTER, a, op)
                parts = np.empty_like(send)
                self._payload(REDUCESCATTER, self.comm.Ialltoall, _bytes(send), _bytes(parts))
                reduce_stack(parts, op, a)
            buf.done()

    def barrier(self) -> None:
        with self.call_lock:
            self._round(BARRIER, None)

    # -- point to point --------------------------------------------------------------------
    def send(self, tensor: Any, dst_rank: int) -> None:
        with self.call_lock:
            self._check_peer(dst_rank, "dst_rank")
            try:
                a, bad = self.buffer(tensor, False).array, None
            except (TypeError, ValueError) as exc:
                a, bad = None, exc
            if self._announce(dst_rank, a, bad, inline=True):
                with self.lock:
                    req = self.comm.Isend(_bytes(a), dst_rank, TAG_DATA)
                self._wait([req], f"send to rank {dst_rank}", peer=dst_rank)

    def recv(self, tensor: Any, src_rank: int) -> None:
        with self.call_lock:
            self._check_peer(src_rank, "src_rank")
            buf = self.buffer(tensor, True, read=False)
            a = buf.array
            inline, reply = self._expect(src_rank, a)
            if reply is None:
                _bytes(a)[:] = inline
            else:
                with self.lock:
                    req = self.comm.Irecv(_bytes(a), src_rank, TAG_DATA)
                self._wait([reply, req], f"recv from rank {src_rank}", peer=src_rank)
            buf.done()

    def _check_peer(self, peer: int, what: str) -> None:
        self._usable()
        self._check_rank(peer, what, peer=True)

    def _announce(self, dst_rank: int, a: np.ndarray | None, bad: BaseException | None,
                  inline: bool) -> bool:
        """A send's header round: tells dst_rank what this rank sends (a's dtype and shape;
        a's data too when inline and small) and, when the data follows, waits for dst_rank to
        agree. Raises bad (after telling dst_rank) or the mismatch dst_rank reports; True
        when the data must follow."""
        seq = self.p2p_seq[(0, dst_rank)] = self.p2p_seq.get((0, dst_rank), 0) + 1
        small = inline and a is not None and a.nbytes <= INLINE
        slot = np.zeros(SLOT, np.uint8)
        # a send's header says in its root word whether its data came along
        header = make_header(SEND, seq, a, root=int(small), bad=bad is not None)
        slot[:HEADER_BYTES] = header.view(np.uint8)
        if small:
            slot[HEADER_BYTES:HEADER_BYTES + a.nbytes] = _bytes(a)
        what = f"send to rank {dst_rank}"
        with self.lock:
            req = self.comm.Isend(slot, dst_rank, TAG_HEADER)
        self._wait([req], what, peer=dst_rank)
        if bad is not None:
            raise bad
        if small:
            return False
        reply = np.zeros(HEADER_WORDS, np.int64)
        with self.lock:
            req = self.comm.Irecv(reply, dst_rank, TAG_REPLY)
        self._wait([req], what, peer=dst_rank)
        if reply[BAD]:
            raise CollectiveError(f"group {self.name!r}: send to rank {dst_rank}: it expects "
                                  f"{describe(reply)}, this rank sends {describe(header)}")
        return True

    def _expect(self, src_rank: int, a: np.ndarray) -> tuple[np.ndarray | None, Any]:
        """A recv's header round: checks what src_rank sends against a (dtype and shape).
        Returns (the data, None) when it came with the header, else (None, the request of
        this rank's agreement, which lets the data come). Raises on a mismatch, after
        telling src_rank."""
        seq = self.p2p_seq[(1, src_rank)] = self.p2p_seq.get((1, src_rank), 0) + 1
        slot = np.empty(SLOT, np.uint8)
        what = f"recv from rank {src_rank}"
        with self.lock:
            req = self.comm.Irecv(slot, src_rank, TAG_HEADER)
        self._wait([req], what, peer=src_rank)
        theirs = slot[:HEADER_BYTES].view(np.int64)
        if theirs[BAD]:
            raise CollectiveError(f"group {self.name!r}: rank {src_rank} passed invalid "
                                  "arguments to send (see the error raised there)")
        mine = make_header(SEND, seq, a)
        small = theirs[ROOT] == 1
        if (theirs[_MATCH] == mine[_MATCH]).all() and theirs[SEQ] == seq:
            if small:
                return slot[HEADER_BYTES:HEADER_BYTES + a.nbytes], None
            with self.lock:
                return None, self.comm.Isend(mine, src_rank, TAG_REPLY)
        if not small:
            mine[BAD] = 1
            with self.lock:
                req = self.comm.Isend(mine, src_rank, TAG_REPLY)
            self._wait([req], what, peer=src_rank)
        raise CollectiveError(f"group {self.name!r}: recv from rank {src_rank}: it sends "
                              f"{describe(theirs)}, this rank expects {describe(mine)}")

    # -- helpers ---------------------------------------------------------------------------
    def _check_rank(self, rank: int, what: str, peer: bool = False) -> None:
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < self.world_size:
            raise ValueError(f"{what} must be a rank of group {self.name!r} (0..."
                             f"{self.world_size - 1}), got {rank!r}")
        if peer and rank == self.rank:
            raise ValueError(f"{what} is this member's own rank {rank}")

    def _list(self, tensors: list, like, what: str, convert: Callable) -> list:
        """convert(tensor, name) of each of tensors (one per rank); ValueError unless each
        matches like's dtype and shape."""
        if not isinstance(tensors, (list, tuple)) or len(tensors) != self.world_size:
            raise ValueError(f"{what} must be a list of {self.world_size} tensors (one per rank)")
        items = [convert(t, f"{what}[{i}]") for i, t in enumerate(tensors)]
        for i, item in enumerate(items):
            if item.shape != like.shape or item.dtype != like.dtype:
                raise ValueError(f"{what}[{i}] is {item.dtype} {item.shape}, the tensor is "
                                 f"{like.dtype} {like.shape}: they must match")
        return items

    @contextmanager
    def mpi_comm(self) -> Iterator[MPI.Comm]:
        self._usable()
        with self.call_lock, self.runtime.exclusive_mpi():
            yield self.user_comm

    def abort(self, reason: str) -> None:
        self.broken = self.broken or reason

    def lose(self, message: str) -> None:
        self.lost = self.lost or message
        self.broken = self.broken or message

    def failed(self, exc: BaseException) -> None:
        """An operation raised exc: where MPI reports a dead member (ULFM), the group is lost
        and CollectiveGroupError says so; anything else is raised as it is."""
        if isinstance(exc, MPI.Exception):
            if exc.Get_error_class() not in FAILURE_CLASSES:
                raise exc
        elif not (isinstance(exc, RuntimeError) and str(exc).startswith("MPI_")):  # (C path)
            raise exc
        dead = self._failed_members()
        if not dead and not isinstance(exc, MPI.Exception):
            raise exc
        _ABANDONED.append((self, None))
        if not self.lost:  # the head's notice says more: give it a moment
            deadline = time.monotonic() + HEAD_WORD
            while not self.lost and time.monotonic() < deadline:
                time.sleep(0.01)
        who = (", ".join(f"rank {r} (MPI rank {self.mpi_ranks[r]})" for r in dead)
               if dead else "ranks ?")
        self.lose(f"group {self.name!r}: member {who} is gone: MPI reported {exc}")
        self._usable()

    def _failed_members(self) -> list[int]:
        """The group ranks MPI knows to have failed (ULFM), else []."""
        try:
            with self.lock:
                return failed_ranks(self.comm)
        except (AttributeError, NotImplementedError, MPI.Exception):
            return []

    def destroy(self) -> None:
        with self.call_lock:
            if not self.broken:  # a timed-out operation may still be pending on the comm
                try:
                    with self.lock:
                        if self._gather is not None:
                            self._gather.Free()
                        self.user_comm.Free()
                        self.comm.Free()
                except MPI.Exception:  # (ULFM: a member died meanwhile) leave it
                    _ABANDONED.append((self, None))
            self.broken = self.broken or "the group was destroyed"
            self._rendezvous("leave", self.instance, self.rank)
