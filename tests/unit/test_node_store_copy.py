"""The node store's parallel copy into segments: pwrite for fresh pages, the mapping for
mapped ones, checked against the source bytes through a second, read-only mapping."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from hpcray._private.transport import shm


def _readback(segment: shm.Segment) -> list[bytes]:
    peer = shm.Segment.open_peer(*segment.describe())
    return [bytes(v) for v in peer.views()]


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_fill_fresh_then_reused_segment(threads):
    rng = np.random.default_rng(threads)
    copier = shm.Copier(threads)
    copier.CHUNK, copier.PARALLEL = 1 << 16, 1 << 16  # many pieces, every path taken
    sizes = [int(s) for s in rng.integers(1, 700_000, size=4)] + [1 << 18]
    segment = shm.Segment.create(sizes, "a1")
    for round_ in range(3):  # fresh, then the same pages again with other bytes
        buffers = [rng.integers(0, 256, size=n, dtype=np.uint8) for n in sizes]
        copier.fill(segment, [memoryview(b) for b in buffers])
        assert _readback(segment) == [b.tobytes() for b in buffers], f"round {round_}"
        assert [bytes(v) for v in segment.views()] == [b.tobytes() for b in buffers]
    # with a pwrite() thread some pages have no mapping here yet: a reuse maps them first
    assert segment.mapped == (threads == 1)


def test_fill_by_pwrite_reaches_other_mappings():
    data = os.urandom(3 * (1 << 16) + 5)
    segment = shm.Segment.create([len(data)], "b2")
    view = memoryview(data)
    offset = segment.layout[0][0]
    assert shm._pwrite(segment.fd, view, offset)
    assert _readback(segment) == [data]
    assert not segment.mapped


def test_holding_uses_the_pool_and_keeps_bytes():
    pool = shm.SegmentPool(1 << 30)
    rng = np.random.default_rng(7)
    first = rng.integers(0, 256, size=shm.SegmentPool.MIN_SIZE + 123, dtype=np.uint8)
    segment = shm.Segment.holding([first], "c3", pool)
    assert bytes(segment.views()[0]) == first.tobytes()
    pool.give(segment)
    second = rng.integers(0, 256, size=first.size, dtype=np.uint8)
    again = shm.Segment.holding([second], "c4", pool)
    assert again is segment  # reused: same pages, new bytes and tag
    assert _readback(again) == [second.tobytes()]


def test_reused_segment_is_mapped_whole_before_the_copy():
    """Pages a first fill wrote by pwrite() are mapped in one call when the segment is
    reused, and the bytes written through that new mapping are the ones readers see."""
    pool = shm.SegmentPool(1 << 30)
    copier = shm.Copier(2)
    copier.CHUNK = 1 << 16
    rng = np.random.default_rng(3)
    size = shm.SegmentPool.MIN_SIZE + 4096
    segment = shm.Segment.create([size], "d1")
    first = rng.integers(0, 256, size=size, dtype=np.uint8)
    shm._pwrite(segment.fd, memoryview(first), segment.layout[0][0])  # nothing mapped here
    assert not segment.mapped
    pool.give(segment)
    again = shm.Segment.create([size], "d2", pool)
    assert again is segment
    assert again.mapped is True
    second = rng.integers(0, 256, size=size, dtype=np.uint8)
    copier.fill(again, [memoryview(second)])
    assert _readback(again) == [second.tobytes()]


def _reader(segment: shm.Segment) -> subprocess.Popen:
    """Another process that maps the segment (as a rank or executor does) until told."""
    pid, fd, ino, tag, layout = segment.describe()
    code = ("import sys\nfrom hpcray._private.transport import shm\n"
            f"s = shm.Segment.open_peer({pid}, {fd}, {ino}, {tag!r}, {layout!r})\n"
            "print('mapped', flush=True)\n"
            "sys.stdin.readline()\n"
            "s.mm.close()\n"
            "print('released', flush=True)\n"
            "sys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "mapped"
    return proc


@pytest.mark.parametrize("lets_go", [True, False])
def test_take_waits_for_a_reader_to_let_go(lets_go):
    """A large freed segment another process still maps is taken once that process lets go
    during the wait, and never while it still maps it."""
    pool = shm.SegmentPool(1 << 30)
    pool.WAIT_FOR_READERS = 60.0 if lets_go else 0.05  # (no timing assumption either way)
    segment = shm.Segment.create([shm.SegmentPool.WAIT_MIN], "e1")
    total = len(segment.mm)
    reader = _reader(segment)
    try:
        pool.give(segment)
        if lets_go:
            threading.Timer(0.05, lambda: (reader.stdin.write("go\n"), reader.stdin.flush())
                            ).start()
            assert pool.take(total) is segment
            assert reader.stdout.readline().strip() == "released"
        else:
            assert pool.take(total) is None
            assert segment.ino in shm.mapped_inodes()
    finally:
        reader.kill()
        reader.wait()
