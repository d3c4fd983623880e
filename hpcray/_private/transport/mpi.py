"""MPI transport: control messages and zero-copy buffer transfers.

Every MPI call goes through one ``Transport`` under its lock, so any thread of a
rank may send while the progress thread receives.

Where the MPI has ULFM (Open MPI 5 under ``mpirun --with-ft ulfm``) a peer's death is an
error of the call that meets it (ERR_PROC_FAILED from the receive path, a send completing in
error): the transport acknowledges it, keeps the communicator (point to point with the other
ranks goes on, rank numbers unchanged: no shrink) and reports the rank (``take_failed``).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from mpi4py import MPI

from .buffers import BufferPool

CTRL = 11  # pickled control messages, ordered per sender
DATA = 12  # raw buffers following an OBJDATA control message
BATCH = "batch"  # a control message carrying several, queued while the peer was behind


def ulfm_enabled() -> bool:
    """Whether this job's MPI reports dead ranks as errors (ULFM): Open MPI started with
    ``mpirun --with-ft ulfm``, which sets ``OMPI_MCA_mpi_ft_enable`` for its ranks."""
    flag = os.environ.get("OMPI_MCA_mpi_ft_enable", "").strip().lower()
    return (flag in ("1", "true", "yes", "on", "enabled")
            and MPI.Get_library_version().startswith("Open MPI"))


# what an MPI call raises under ULFM when it met a dead rank (ERR_IN_STATUS: a request of
# Testsome/Testall did)
FAILURE_CLASSES = {MPI.ERR_PROC_FAILED, MPI.ERR_PROC_FAILED_PENDING, MPI.ERR_REVOKED,
                   MPI.ERR_IN_STATUS}


def failed_ranks(comm: MPI.Comm) -> list[int]:
    """The ranks of comm that MPI knows to have failed (ULFM), sorted."""
    group, everyone = comm.Get_failed(), comm.Get_group()
    try:
        ranks = MPI.Group.Translate_ranks(group, list(range(group.Get_size())), everyone)
    finally:
        group.Free()
        everyone.Free()
    return sorted(r for r in ranks if r != MPI.UNDEFINED)


class Transport:
    """Sends and receives over one communicator."""

    def __init__(self, comm: MPI.Comm, ulfm: bool = False):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.lock = threading.RLock()
        self.ulfm = ulfm
        if ulfm:
            comm.Set_errhandler(MPI.ERRORS_RETURN)  # mpi4py raises MPI.Exception
        self.dead: set[int] = set()        # nothing more goes to these ranks
        self._failed: list[int] = []       # dead ranks MPI reported, not yet taken
        self.on_failure: Callable[[], None] | None = None  # called when MPI reports one
        self._sends: list[MPI.Request] = []
        self._keep: list[Any] = []
        self._dests: list[int] = []
        # sends to dead ranks that may never complete, kept (with their buffers) and not waited
        self._abandoned: dict[int, tuple[MPI.Request, Any]] = {}
        # control messages to a peer that has not taken the previous one yet go out together
        # once it has (no delay while the peer keeps up: the first message leaves at once)
        self._last: dict[int, MPI.Request] = {}   # dest -> its latest control send
        self._outbox: dict[int, list] = {}        # dest -> messages waiting for that send
        self._inbox: collections.deque = collections.deque()  # (source, msg) of a batch
        self.pool = BufferPool(256 << 20)
        self.closed = False

    def close(self) -> None:
        """No MPI call goes through this transport afterwards (MPI is being finalized)."""
        with self.lock:
            self.closed = True

    def send(self, dest: int, msg: tuple) -> None:
        """Queues a control message to ``dest`` (never blocks on the receiver)."""
        with self.lock:
            if self.closed or dest in self.dead:
                return
            waiting = self._outbox.get(dest)
            if waiting is not None:
                waiting.append(msg)
                return
            last = self._last.get(dest)
            if last is not None and not self._test(last):
                self._outbox[dest] = [msg]
                return
            if dest not in self.dead:  # the test above may have found it dead
                self._isend(dest, msg)

    def _isend(self, dest: int, msg: Any) -> None:
        req = self.comm.isend(msg, dest, CTRL)
        self._sends.append(req)
        self._keep.append(None)
        self._dests.append(dest)
        self._last[dest] = req

    def _flush(self) -> None:
        """Sends each queued batch whose peer has taken the message before it."""
        for dest in list(self._outbox):
            last = self._last.get(dest)  # None: forgotten meanwhile (a dead rank)
            if last is not None and self._test(last) and dest not in self.dead:
                msgs = self._outbox.pop(dest)
                self._isend(dest, msgs[0] if len(msgs) == 1 else (BATCH, msgs))

    def isend_raw(self, dest: int, buf) -> MPI.Request:
        """Sends buf's bytes on the DATA tag (host or, for CUDA-aware MPI, device memory);
        buf is kept alive until the send completes. Call with the lock held."""
        if dest in self.dead:
            return MPI.REQUEST_NULL
        req = self.comm.Isend([buf, MPI.BYTE], dest, DATA)
        self._sends.append(req)
        self._keep.append(buf)
        self._dests.append(dest)
        return req

    def pending_sends(self) -> int:
        return len(self._sends) + len(self._outbox)

    def test_sends(self) -> None:
        """Completes finished sends among the oldest few and drops their buffers.

        Testing only a window keeps this O(1) when thousands of sends are queued behind a
        busy receiver; sends to one peer complete in order.
        """
        with self.lock:
            if self.closed:
                return
            if self._outbox:
                self._flush()
            sends = self._sends
            if not sends:
                return
            window = sends[:64]
            try:
                MPI.Request.Testsome(window)
            except MPI.Exception as exc:
                self._met_failure(exc)  # a send to a dead rank: completed in error or dropped
            # completed here or by wait_requests(): either way now REQUEST_NULL
            for i in range(min(len(window), len(sends)) - 1, -1, -1):
                if sends[i] == MPI.REQUEST_NULL:
                    del sends[i]
                    del self._keep[i]
                    del self._dests[i]

    def wait_requests(self, reqs: list[MPI.Request]) -> None:
        """Waits for some sends while letting other threads use MPI in between."""
        while True:
            with self.lock:
                reqs = [r for r in reqs if id(r) not in self._abandoned]  # to a dead rank
                try:
                    if self.closed or MPI.Request.Testall(reqs):
                        return
                except MPI.Exception as exc:
                    self._met_failure(exc)
            time.sleep(0)

    def poll(self) -> tuple[int, Any] | None:
        """Returns (source, message) of the next control message, or None."""
        with self.lock:
            if self.closed:
                return None
            if self._inbox:
                return self._inbox.popleft()
            status = MPI.Status()
            try:
                msg = self.comm.improbe(MPI.ANY_SOURCE, CTRL, status)
            except MPI.Exception as exc:
                self._met_failure(exc)  # acknowledged: the next poll receives again
                return None
            if msg is None:
                return None
            source, msg = status.Get_source(), msg.recv()
            if msg[0] == BATCH:
                self._inbox.extend((source, m) for m in msg[1])
                return self._inbox.popleft()
            return source, msg

    def recv_raw(self, source: int, buf) -> None:
        """Receives the next DATA message from source into buf. Call with the lock held."""
        try:
            self.comm.Recv([buf, MPI.BYTE], source, DATA)
        except MPI.Exception as exc:
            self._met_failure(exc)
            raise  # the object being received is lost with its sender

    def recv_new(self, source: int, size: int):
        """The next DATA message from source, in a (pooled) buffer of its size."""
        buf = self.pool.take(size)
        self.recv_raw(source, buf)
        return buf

    # -- dead ranks --------------------------------------------------------------------------
    def forget(self, rank: int) -> None:
        """``rank`` is dead: its queued messages are dropped, nothing more is sent to it, and
        its sends in flight (which may never complete) no longer count as pending."""
        with self.lock:
            self.dead.add(rank)
            self._outbox.pop(rank, None)
            self._last.pop(rank, None)
            for i in range(len(self._sends) - 1, -1, -1):
                if self._dests[i] == rank:
                    req = self._sends[i]
                    try:
                        done = req.Test()
                    except MPI.Exception:  # completed in error: the peer is gone
                        done = True
                    if not done:
                        self._abandoned[id(req)] = (req, self._keep[i])
                    del self._sends[i]
                    del self._keep[i]
                    del self._dests[i]

    def take_failed(self) -> list[int]:
        """The ranks MPI reported dead (ULFM) since the last call."""
        with self.lock:
            failed, self._failed = self._failed, []
            return failed

    def _test(self, req: MPI.Request) -> bool:
        """Whether a send is done; one that met a dead rank counts as done."""
        try:
            return req.Test()
        except MPI.Exception as exc:
            self._met_failure(exc)
            return True

    def _met_failure(self, exc: MPI.Exception) -> None:
        """An MPI call failed: under ULFM, because ranks died. Acknowledges the failures (so
        receives from any source work again) and forgets the dead ranks; any other error is
        raised again."""
        if not self.ulfm or exc.Get_error_class() not in FAILURE_CLASSES:
            raise exc
        self.comm.Ack_failed()
        new = [r for r in failed_ranks(self.comm) if r not in self.dead]
        for rank in new:
            self.forget(rank)
        if new:
            self._failed.extend(new)
            if self.on_failure is not None:
                self.on_failure()
