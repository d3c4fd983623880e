"""The node store: a large object's buffers in one anonymous shared-memory segment.

A segment is a memfd: it has no name in ``/dev/shm`` or anywhere on disk and lives while some
process holds its descriptor or a mapping, so nothing outlives the job, however it ends. A
rank hands a segment to its executor processes over their socket (``SCM_RIGHTS``); another
rank of the node opens it through ``/proc/<holder pid>/fd/<n>`` (possible for the same user
only), checked against the object id in the memfd's name. Readers map it read-only: a value
read on the node is never copied.

A process keeps the large segments it made once their objects are freed (a ``SegmentPool``)
and writes later objects into them: pages the kernel has already allocated take a copy at
memcpy speed, where first-touch faults of fresh shared memory cost several times that. A
segment is reused only when no other process of this user still maps it (read from
``/proc/<pid>/maps``) and no array of this process still views it.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ALIGN = 64
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
HEADER = 64          # the segment's first bytes: the tag of the object it holds now
_PREFIX = "hpcray-"


def plan(sizes: list[int]) -> tuple[list[tuple[int, int]], int]:
    """(offset, size) of each buffer in a segment (64-byte aligned, after the header), and
    the total size."""
    layout, offset = [], HEADER
    for size in sizes:
        layout.append((offset, size))
        offset += -(-size // ALIGN) * ALIGN
    return layout, max((o + s for o, s in layout), default=HEADER)


class Segment:
    """One object's buffers in node-shared memory."""

    __slots__ = ("fd", "ino", "layout", "mapped", "mm", "reusable", "tag")

    def __init__(self, fd: int, layout: list[tuple[int, int]], tag: str, writable: bool = False):
        self.fd, self.layout, self.tag = fd, layout, tag
        self.ino = os.fstat(fd).st_ino
        self.reusable = writable  # made here: its pages may serve a later object
        self.mapped = False  # every page has a mapping here (written through mm, or map_all)
        total = max((o + s for o, s in layout), default=0)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self.mm = mmap.mmap(fd, total, prot=prot) if total else None

    @classmethod
    def create(cls, sizes: list[int], tag: str, pool: SegmentPool | None = None) -> Segment:
        """A new writable segment for buffers of these sizes (a freed one from ``pool``
        when one fits)."""
        layout, total = plan(sizes)
        segment = pool.take(total) if pool is not None else None
        if segment is not None:
            segment.layout, segment.tag = layout, tag
            segment.map_all()
        else:
            fd = os.memfd_create(_PREFIX + "node-store", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, total)
                segment = cls(fd, layout, tag, writable=True)
            except BaseException:
                os.close(fd)
                raise
        if segment.mm is not None:
            segment.mm[:HEADER] = tag.encode()[:HEADER].ljust(HEADER, b"\0")
        return segment

    @classmethod
    def holding(cls, buffers: list, tag: str, pool: SegmentPool | None = None) -> Segment:
        """A segment with a copy of buffers (the one copy a large value makes)."""
        views = [memoryview(b).cast("B") for b in buffers]
        segment = cls.create([v.nbytes for v in views], tag, pool)
        _copier.fill(segment, views)
        return segment

    def map_all(self) -> None:
        """Maps every page of a reused segment now, in one call: pages written by pwrite()
        have no mapping here yet, and faulting them in one by one while copying costs more
        than the copy."""
        if self.mapped:
            return
        try:
            mm = mmap.mmap(self.fd, len(self.mm), flags=mmap.MAP_SHARED | _POPULATE)
        except OSError:
            return
        try:
            self.mm.close()
        except BufferError:  # still viewed here after all: keep the old mapping
            mm.close()
            return
        self.mm = mm
        self.mapped = True

    def views(self) -> list[memoryview]:
        """The buffers, as views of the mapping."""
        if self.mm is None:
            return [memoryview(b"") for _ in self.layout]
        whole = memoryview(self.mm)
        return [whole[offset:offset + size] for offset, size in self.layout]

    def describe(self) -> tuple:
        """What another rank of the node needs to open it: (pid, fd, inode, tag, layout)."""
        return (os.getpid(), self.fd, self.ino, self.tag, self.layout)

    @classmethod
    def open_peer(cls, pid: int, fd: int, ino: int, tag: str, layout: list) -> Segment:
        """Opens a segment another process of this node holds."""
        mine = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(mine).st_ino != ino:
                raise OSError(f"/proc/{pid}/fd/{fd} is no longer the segment of {tag}")
            segment = cls(mine, layout, tag)
            segment.check()
            return segment
        except BaseException:
            os.close(mine)
            raise

    def check(self) -> None:
        """Raises OSError unless the segment still holds the object it was described with."""
        if self.mm is not None and self.mm[:HEADER].rstrip(b"\0") != self.tag.encode()[:HEADER]:
            raise OSError(f"the node-store segment of {self.tag} now holds another object")

    def __reduce__(self):
        fds = getattr(_sending, "fds", None)
        if fds is None:
            raise TypeError("a Segment travels only over an executor channel")
        fds.append(self.fd)
        return (_received, (len(fds) - 1, self.tag, self.layout))

    def __del__(self):
        if getattr(self, "fd", -1) >= 0:
            with contextlib.suppress(OSError, TypeError):
                os.close(self.fd)


class Copier:
    """Copies large values into segments with several threads.

    Writing through a mapping runs at memcpy speed once this process has the pages mapped,
    and splits across threads; a first write faults each 4 KiB page in, several times slower
    than ``pwrite()``, which fills the pages without mapping them. So into a fresh segment one
    thread ``pwrite``s pieces from the front while the others copy pieces from the back through
    the mapping, each taking the next when done (the faster kind takes more); into a mapped
    (reused) segment every thread copies through the mapping.
    """

    CHUNK = 16 << 20
    PARALLEL = 8 << 20  # smaller values: one copy in the caller's thread

    def __init__(self, threads: int):
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def fill(self, segment: Segment, views: list[memoryview]) -> None:
        total = sum(v.nbytes for v in views)
        if total < self.PARALLEL or self.threads < 2 or segment.mm is None:
            for (offset, size), view in zip(segment.layout, views):
                segment.mm[offset:offset + size] = view
            segment.mapped = True
            return
        pieces = collections.deque((offset + start, view[start:start + self.CHUNK])
                                   for (offset, size), view in zip(segment.layout, views)
                                   for start in range(0, size, self.CHUNK))
        writes = not segment.mapped  # one thread pwrite()s while the others fault pages in
        import numpy as np  # (not at import: a job's start-up need not load it)

        dst = np.frombuffer(segment.mm, np.uint8)
        try:
            helpers = [self._executor().submit(self._work, segment, dst, pieces,
                                               writes and i == 0)
                       for i in range(min(self.threads, len(pieces)) - 1)]
            self._work(segment, dst, pieces, False)
            for helper in helpers:
                helper.result()
            segment.mapped = segment.mapped or not helpers  # (no helper: no pwrite)
        finally:
            del dst  # the pool reuses a segment only when no array views it

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1, "hpcray-copy")
            return self._pool

    @staticmethod
    def _work(segment: Segment, dst, pieces: collections.deque, writes: bool) -> None:
        """Copies pieces until none is left: by pwrite() from the front (``writes``), else
        through the mapping from the back."""
        import numpy as np

        while True:
            try:
                offset, view = pieces.popleft() if writes else pieces.pop()
            except IndexError:
                return
            if not (writes and _pwrite(segment.fd, view, offset)):
                np.copyto(dst[offset:offset + view.nbytes], np.frombuffer(view, np.uint8))


def _pwrite(fd: int, view: memoryview, offset: int) -> bool:
    """Writes view at offset; True once written."""
    done = 0
    while done < view.nbytes:
        written = os.pwrite(fd, view[done:], offset + done)
        if written <= 0:
            return False
        done += written
    return True


def _copy_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(2, min(4, cpus))


_copier = Copier(_copy_threads())
_sending = threading.local()   # .fds: descriptors of the message being pickled
_receiving = threading.local()  # .fds: descriptors that came with the message being unpickled


def _received(index: int, tag: str, layout: list) -> Segment:
    return Segment(_receiving.fds[index], layout, tag)


def buffers_of(item) -> list:
    """A message's buffers: a Segment's views, or the list itself."""
    return item.views() if isinstance(item, Segment) else item


def _available_fraction() -> float:
    """The share of this machine's memory still available (1.0 if unknown)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            info = dict(line.split(b":", 1) for line in f.read().splitlines())
        return int(info[b"MemAvailable"].split()[0]) / int(info[b"MemTotal"].split()[0])
    except (OSError, KeyError, ValueError):
        return 1.0


def mapped_inodes() -> set[int]:
    """Inodes of hpcray segments that other processes of this user map now."""
    me, uid = os.getpid(), os.getuid()
    found: set[int] = set()
    marker = b"/memfd:" + _PREFIX.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/maps", "rb") as f:
                text = f.read()
        except OSError:
            continue
        if marker not in text:
            continue
        for line in text.splitlines():
            if marker in line:
                found.add(int(line.split()[4]))
    return found


class SegmentPool:
    """Freed segments this process made, kept mapped for reuse for ``KEEP_SECONDS``, while
    they fit in ``capacity`` bytes and the machine has a quarter of its memory available.

    Only segments of at least ``MIN_SIZE`` bytes are kept: a smaller one costs less to make
    than the check that no other process still maps it."""

    MIN_SIZE = 4 << 20
    WAIT_MIN = 32 << 20       # a value this large waits up to WAIT_FOR_READERS for a segment
    WAIT_FOR_READERS = 0.01   # that another process still maps
    KEEP_SECONDS = 2.0  # a freed segment not reused within this goes back to the system

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.lock = threading.Lock()
        self.free: list[tuple[float, Segment]] = []    # (when freed, segment): reusable now
        self.viewed: list[tuple[float, Segment]] = []  # freed, still viewed in this process
        self.trimmer: threading.Thread | None = None

    def give(self, segment: Segment) -> None:
        """Takes back a segment whose object was freed (unless too small or not its own)."""
        if (self.capacity <= 0 or not segment.reusable or segment.mm is None
                or len(segment.mm) < self.MIN_SIZE):
            return
        with self.lock:
            self.viewed.append((time.monotonic(), segment))
            self._settle()
            if self.trimmer is None:
                self.trimmer = threading.Thread(target=self._trim, daemon=True,
                                                name="hpcray-segment-pool")
                self.trimmer.start()

    def _trim(self) -> None:
        """Returns segments unused for KEEP_SECONDS (memory is freed when refs go, after
        a short grace for reuse)."""
        while True:
            time.sleep(self.KEEP_SECONDS / 2)
            with self.lock:
                self._settle()

    def _settle(self) -> None:
        """Freed segments that no array of this process views any more join ``free``; those
        past KEEP_SECONDS, or the oldest beyond the capacity, go."""
        still = []
        for entry in self.viewed:
            # every buffer export of the mapping holds a reference to it
            viewed = sys.getrefcount(entry[1].mm) > 2  # the attribute and this argument
            (still if viewed else self.free).append(entry)
        self.viewed = still
        stale = time.monotonic() - self.KEEP_SECONDS
        kept = sorted((entry for entry in self.free if entry[0] >= stale),
                      key=lambda entry: entry[0], reverse=True)  # newest first
        room = self.capacity if _available_fraction() > 0.25 else 0
        self.free = []
        for entry in kept:
            if len(entry[1].mm) <= room:
                self.free.append(entry)
                room -= len(entry[1].mm)

    def take(self, total: int) -> Segment | None:
        """A freed segment mapping ``total`` to ``2 * total`` bytes that no other process
        maps, or None."""
        if total < self.MIN_SIZE:
            return None
        with self.lock:
            self._settle()
            fits = [entry for entry in self.free if total <= len(entry[1].mm) <= 2 * total]
            if not fits:
                return None
            fits.sort(key=lambda entry: len(entry[1].mm))
            # frees are asynchronous: a reader lets go of a segment a moment after its
            # object's last use, and new pages for a large value cost far more than a wait
            deadline = time.monotonic() + (self.WAIT_FOR_READERS if total >= self.WAIT_MIN
                                           else 0.0)
            while True:
                busy = mapped_inodes()
                for entry in fits:
                    if entry[1].ino not in busy:
                        self.free.remove(entry)
                        return entry[1]
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.0005)
