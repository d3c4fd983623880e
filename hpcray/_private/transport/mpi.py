"""MPI transport: control messages and zero-copy buffer transfers.

Every MPI call goes through one ``Transport`` under its lock, so any thread of a
rank may send while the progress thread receives.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from mpi4py import MPI

from .buffers import BufferPool

CTRL = 11  # pickled control messages, ordered per sender
DATA = 12  # raw buffers following an OBJDATA control message
BATCH = "batch"  # a control message carrying several, queued while the peer was behind


class Transport:
    """Sends and receives over one communicator."""

    def __init__(self, comm: MPI.Comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.lock = threading.RLock()
        self._sends: list[MPI.Request] = []
        self._keep: list[Any] = []
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
            if self.closed:
                return
            waiting = self._outbox.get(dest)
            if waiting is not None:
                waiting.append(msg)
                return
            last = self._last.get(dest)
            if last is not None and not last.Test():
                self._outbox[dest] = [msg]
                return
            self._isend(dest, msg)

    def _isend(self, dest: int, msg: Any) -> None:
        req = self.comm.isend(msg, dest, CTRL)
        self._sends.append(req)
        self._keep.append(None)
        self._last[dest] = req

    def _flush(self) -> None:
        """Sends each queued batch whose peer has taken the message before it."""
        for dest in list(self._outbox):
            if self._last[dest].Test():
                msgs = self._outbox.pop(dest)
                self._isend(dest, msgs[0] if len(msgs) == 1 else (BATCH, msgs))

    def isend_raw(self, dest: int, buf) -> MPI.Request:
        """Sends buf's bytes on the DATA tag (host or, for CUDA-aware MPI, device memory);
        buf is kept alive until the send completes. Call with the lock held."""
        req = self.comm.Isend([buf, MPI.BYTE], dest, DATA)
        self._sends.append(req)
        self._keep.append(buf)
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
            MPI.Request.Testsome(window)
            # completed here or by wait_requests(): either way now REQUEST_NULL
            for i in range(len(window) - 1, -1, -1):
                if window[i] == MPI.REQUEST_NULL:
                    del sends[i]
                    del self._keep[i]

    def wait_requests(self, reqs: list[MPI.Request]) -> None:
        """Waits for some sends while letting other threads use MPI in between."""
        while True:
            with self.lock:
                if self.closed or MPI.Request.Testall(reqs):
                    return
            time.sleep(0)

    def poll(self) -> tuple[int, Any] | None:
        """Returns (source, message) of the next control message, or None."""
        with self.lock:
            if self.closed:
                return None
            if self._inbox:
                return self._inbox.popleft()
            status = MPI.Status()
            msg = self.comm.improbe(MPI.ANY_SOURCE, CTRL, status)
            if msg is None:
                return None
            source, msg = status.Get_source(), msg.recv()
            if msg[0] == BATCH:
                self._inbox.extend((source, m) for m in msg[1])
                return self._inbox.popleft()
            return source, msg

    def recv_raw(self, source: int, buf) -> None:
        """Receives the next DATA message from source into buf. Call with the lock held."""
        self.comm.Recv([buf, MPI.BYTE], source, DATA)

    def recv_new(self, source: int, size: int):
        """The next DATA message from source, in a (pooled) buffer of its size."""
        buf = self.pool.take(size)
        self.comm.Recv([buf, MPI.BYTE], source, DATA)
        return buf
