"""The node store: a large object's buffers in one anonymous shared-memory segment.

A segment is a memfd: it has no name in ``/dev/shm`` or anywhere on disk and lives while some
process holds its descriptor or a mapping, so nothing outlives the job, however it ends. A
rank hands a segment to its executor processes over their socket (``SCM_RIGHTS``); another
rank of the node opens it through ``/proc/<holder pid>/fd/<n>`` (possible for the same user
only), checked against the object id in the memfd's name. Readers map it read-only: a value
read on the node is never copied.
"""

from __future__ import annotations

import mmap
import os
import threading

ALIGN = 64
_PREFIX = "hpcray-"


def plan(sizes: list[int]) -> tuple[list[tuple[int, int]], int]:
    """(offset, size) of each buffer in a segment (64-byte aligned), and the total size."""
    layout, offset = [], 0
    for size in sizes:
        layout.append((offset, size))
        offset += -(-size // ALIGN) * ALIGN
    return layout, offset


class Segment:
    """One object's buffers in node-shared memory."""

    __slots__ = ("fd", "layout", "mm", "tag")

    def __init__(self, fd: int, layout: list[tuple[int, int]], tag: str, writable: bool = False):
        self.fd, self.layout, self.tag = fd, layout, tag
        total = max((o + s for o, s in layout), default=0)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self.mm = mmap.mmap(fd, total, prot=prot) if total else None

    @classmethod
    def create(cls, sizes: list[int], tag: str) -> Segment:
        """A new writable segment for buffers of these sizes."""
        layout, total = plan(sizes)
        fd = os.memfd_create(_PREFIX + tag, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, total)
            return cls(fd, layout, tag, writable=True)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def holding(cls, buffers: list, tag: str) -> Segment:
        """A segment with a copy of buffers (the one copy a large value makes)."""
        views = [memoryview(b).cast("B") for b in buffers]
        segment = cls.create([v.nbytes for v in views], tag)
        for (offset, size), view in zip(segment.layout, views):
            segment.mm[offset:offset + size] = view
        return segment

    def views(self) -> list[memoryview]:
        """The buffers, as views of the mapping."""
        if self.mm is None:
            return [memoryview(b"") for _ in self.layout]
        whole = memoryview(self.mm)
        return [whole[offset:offset + size] for offset, size in self.layout]

    def describe(self) -> tuple:
        """What another rank of the node needs to open it: (pid, fd, tag, layout)."""
        return (os.getpid(), self.fd, self.tag, self.layout)

    @classmethod
    def open_peer(cls, pid: int, fd: int, tag: str, layout: list) -> Segment:
        """Opens a segment another process of this node holds."""
        mine = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            name = os.readlink(f"/proc/self/fd/{mine}")
            if not name.startswith(f"/memfd:{_PREFIX}{tag}"):
                raise OSError(f"/proc/{pid}/fd/{fd} is {name!r}, not the segment of {tag}")
            return cls(mine, layout, tag)
        except BaseException:
            os.close(mine)
            raise

    def __reduce__(self):
        fds = getattr(_sending, "fds", None)
        if fds is None:
            raise TypeError("a Segment travels only over an executor channel")
        fds.append(self.fd)
        return (_received, (len(fds) - 1, self.tag, self.layout))

    def __del__(self):
        try:
            os.close(self.fd)
        except (OSError, AttributeError, TypeError):
            pass


_sending = threading.local()   # .fds: descriptors of the message being pickled
_receiving = threading.local()  # .fds: descriptors that came with the message being unpickled


def _received(index: int, tag: str, layout: list) -> Segment:
    return Segment(_receiving.fds[index], layout, tag)


def buffers_of(item) -> list:
    """A message's buffers: a Segment's views, or the list itself."""
    return item.views() if isinstance(item, Segment) else item
