"""A rank's channel to one of its executor processes: tuples over a Unix socket pair.

Buffers wrapped in ``pickle.PickleBuffer`` travel out of band (pickle protocol 5): they
are written from their own memory with one scatter-gather send and large ones are read
straight into their final bytearray, never copied into or out of the pickle. Small messages
are read many at a time: one system call, not three per message.
"""

from __future__ import annotations

import array
import collections
import pickle
import socket
import struct
import threading
from typing import Any

from . import shm

_PREFIX = struct.Struct("<III")  # buffer count, header length, descriptor count
_SOCKET_BUFFER = 4 << 20
_READ = 1 << 16  # bytes a read asks for; a buffer this large is read into its own memory
MAX_FDS = 250  # shared-memory segments per message (the kernel passes at most 253)


def oob(buffers: list) -> list:
    """Marks a value's buffers to travel out of band."""
    return [pickle.PickleBuffer(b) for b in buffers]


class ChannelClosed(EOFError):
    """The other end closed the channel (or died)."""


class Channel:
    """Sends and receives tuples; any thread may send, one thread receives."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.lock = threading.Lock()
        self._in = bytearray(_READ)  # read ahead: bytes [_pos, _end) are not taken yet
        self._pos = self._end = 0
        self._fds: collections.deque[int] = collections.deque()  # came, not yet taken
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
            except OSError:
                pass

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: tuple) -> None:
        """Sends msg; node-store segments in it travel as descriptors (SCM_RIGHTS)."""
        buffers: list = []
        shm._sending.fds = fds = []
        try:
            header = pickle.dumps(msg, protocol=5, buffer_callback=buffers.append)
        finally:
            shm._sending.fds = None
        if not buffers and not fds:  # most messages: one plain write
            data = _PREFIX.pack(0, len(header), 0) + header
            with self.lock:
                try:
                    self.sock.sendall(data)
                except OSError as exc:
                    raise ChannelClosed(str(exc)) from exc
            return
        if len(fds) > MAX_FDS:
            raise ValueError(f"a message may carry {MAX_FDS} shared-memory segments, not "
                             f"{len(fds)}")
        raws = [b.raw() for b in buffers]
        sizes = struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws))
        parts = [_PREFIX.pack(len(raws), len(header), len(fds)) + sizes, header, *raws]
        with self.lock:
            try:
                _send_all(self.sock, parts, fds)
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc

    def recv(self) -> Any:
        count, length, nfds = _PREFIX.unpack(self._take(_PREFIX.size))
        sizes = struct.unpack(f"<{count}Q", self._take(8 * count)) if count else ()
        header = self._take(length)
        buffers = [self._take(size) for size in sizes]
        # a message's descriptors come with its first bytes, so they are here by now
        fds = [self._fds.popleft() for _ in range(nfds)]
        shm._receiving.fds = fds
        try:
            return pickle.loads(header, buffers=buffers)
        finally:
            shm._receiving.fds = None

    def buffered(self) -> bool:
        """Whether bytes of a next message were read ahead (the socket may be empty)."""
        return self._pos < self._end

    def _take(self, size: int) -> bytearray:
        """The next size bytes, from what was read ahead and then from the socket."""
        start, end = self._pos, self._end
        if end - start >= size:
            self._pos = start + size
            return self._in[start:start + size]
        out = bytearray(size)
        got = end - start
        out[:got] = memoryview(self._in)[start:end]
        self._pos = self._end = 0
        view = memoryview(out)
        while got < size:
            if size - got >= _READ:  # straight into its own memory
                got += self._recv(view[got:])
                continue
            n = self._recv(memoryview(self._in))
            part = min(n, size - got)
            view[got:got + part] = memoryview(self._in)[:part]
            got += part
            self._pos, self._end = part, n
        return out

    def _recv(self, into: memoryview) -> int:
        """Reads what is there (at least 1 byte) into ``into``; keeps the descriptors."""
        try:
            n, ancillary, _, _ = self.sock.recvmsg_into([into], socket.CMSG_SPACE(MAX_FDS * 4))
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        if n == 0:
            raise ChannelClosed("the other end closed the channel")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[:len(payload) - len(payload) % 4])
                self._fds.extend(got)
        return n

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _send_all(sock: socket.socket, parts: list, fds: list[int]) -> None:
    views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    while views:
        sent = sock.sendmsg(views[:512], ancillary)
        ancillary = []
        while sent:
            first = views[0]
            if sent >= first.nbytes:
                sent -= first.nbytes
                views.pop(0)
            else:
                views[0] = first[sent:]
                sent = 0


class Waker:
    """A descriptor that a sleeping ``select``/``epoll`` watches, so another thread can
    interrupt the sleep. Waking never blocks: at most one byte is pending, however many
    wakes come before the sleeper drains it (the sleeper itself may wake it many times
    while it handles messages, and a full socket buffer would then stop it for good)."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._pending = False

    def fileno(self) -> int:
        return self._r.fileno()

    def wake(self) -> None:
        if self._pending:
            return
        self._pending = True
        try:
            self._w.send(b"x")
        except OSError:  # full (a byte is pending anyway) or closed
            pass

    def drain(self) -> None:
        """Called by the sleeper when the descriptor is readable."""
        self._pending = False  # (cleared first: a wake from now on sends a byte again)
        try:
            while self._r.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._r.close()
        self._w.close()
