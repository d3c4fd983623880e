"""An in-process transport: a head and its workers as threads of one process.

The same interface as the MPI transport, over queues: control messages are pickled and
unpickled as on the wire, buffers are copied, requests complete at once. It lets the
protocol run without MPI in tests that take milliseconds (as dask's ``inproc`` comm).
"""

from __future__ import annotations

import collections
import pickle
import threading
import time
from typing import Any

from .buffers import BufferPool


class _Done:
    """A request that completed when it was made."""

    def Test(self) -> bool:
        return True


class LoopbackHub:
    """The 'job': one inbox of control messages and one FIFO of data per (source, dest)."""

    def __init__(self, size: int):
        self.size = size
        self.inbox: list[collections.deque] = [collections.deque() for _ in range(size)]
        self.data: dict[tuple[int, int], collections.deque] = collections.defaultdict(
            collections.deque)

    def transport(self, rank: int) -> LoopbackTransport:
        return LoopbackTransport(self, rank)


class LoopbackTransport:
    """One rank's end of a LoopbackHub."""

    def __init__(self, hub: LoopbackHub, rank: int):
        self.hub = hub
        self.rank = rank
        self.size = hub.size
        self.lock = threading.RLock()
        self.pool = BufferPool(64 << 20)
        self.closed = False
        self.ulfm = False  # a dead rank is found by the head's pid and heartbeat checks

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def send(self, dest: int, msg: tuple) -> None:
        if not self.closed:
            self.hub.inbox[dest].append((self.rank, pickle.dumps(msg, 5)))

    def isend_raw(self, dest: int, buf) -> _Done:
        self.hub.data[(self.rank, dest)].append(bytes(memoryview(buf).cast("B")))
        return _Done()

    def pending_sends(self) -> int:
        return 0

    def test_sends(self) -> None:
        pass

    def wait_requests(self, reqs: list) -> None:
        pass

    def poll(self) -> tuple[int, Any] | None:
        if self.closed:
            return None
        try:
            src, blob = self.hub.inbox[self.rank].popleft()
        except IndexError:
            return None
        return src, pickle.loads(blob)

    def forget(self, rank: int) -> None:
        """A dead rank: nothing is pending towards it here (requests complete at once)."""

    def take_failed(self) -> list[int]:
        return []

    def recv_raw(self, source: int, buf) -> None:
        """The next buffer from source; its sender queues it just after the control message."""
        fifo = self.hub.data[(source, self.rank)]
        deadline = time.monotonic() + 10
        while not fifo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {self.rank}: no data from rank {source}")
            time.sleep(0)
        memoryview(buf).cast("B")[:] = fifo.popleft()

    def recv_new(self, source: int, size: int):
        buf = self.pool.take(size)
        self.recv_raw(source, buf)
        return buf
