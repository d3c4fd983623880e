"""A rank's channel to one of its executor processes: tuples over a Unix socket pair.

Buffers wrapped in ``pickle.PickleBuffer`` travel out of band (pickle protocol 5): they
are written from their own memory with one scatter-gather send and read straight into
their final bytearray, never copied into or out of the pickle.
"""

from __future__ import annotations

import array
import pickle
import socket
import struct
import threading
from typing import Any

from . import shm

_PREFIX = struct.Struct("<II")  # buffer count, header length
_SOCKET_BUFFER = 4 << 20
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
        if len(fds) > MAX_FDS:
            raise ValueError(f"a message may carry {MAX_FDS} shared-memory segments, not "
                             f"{len(fds)}")
        raws = [b.raw() for b in buffers]
        sizes = struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws))
        parts = [_PREFIX.pack(len(raws), len(header)) + sizes, header, *raws]
        with self.lock:
            try:
                _send_all(self.sock, parts, fds)
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc

    def recv(self) -> Any:
        first, fds = self._read_first()
        count, length = _PREFIX.unpack(first)
        sizes = struct.unpack(f"<{count}Q", self._read(8 * count)) if count else ()
        header = self._read(length)
        buffers = [self._read(size) for size in sizes]
        shm._receiving.fds = fds
        try:
            return pickle.loads(header, buffers=buffers)
        finally:
            shm._receiving.fds = None

    def _read_first(self) -> tuple[bytearray, list[int]]:
        """A message's prefix, with the descriptors that came with it."""
        data = bytearray(_PREFIX.size)
        fds: list[int] = []
        try:
            n, ancillary, _, _ = self.sock.recvmsg_into(
                [data], socket.CMSG_SPACE(MAX_FDS * 4))
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        if n == 0:
            raise ChannelClosed("the other end closed the channel")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[:len(payload) - len(payload) % 4])
                fds.extend(got)
        if n < len(data):
            data[n:] = self._read(len(data) - n)
        return data, fds

    def _read(self, size: int) -> bytearray:
        data = bytearray(size)
        view = memoryview(data)
        got = 0
        while got < size:
            try:
                n = self.sock.recv_into(view[got:])
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc
            if n == 0:
                raise ChannelClosed("the other end closed the channel")
            got += n
        return data

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
