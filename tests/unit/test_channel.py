"""The rank-executor channel: messages of every shape arrive whole and in order, however
the socket splits or joins them, and node-store segments arrive with their own message."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from hpcray._private.transport import shm
from hpcray._private.transport.pipe import Channel, ChannelClosed, oob


def _pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return Channel(a), Channel(b)


def _message(rng: np.random.Generator, i: int) -> tuple:
    kind = rng.integers(0, 4)
    if kind == 0:  # small, no buffer: one plain write
        return ("small", i, "x" * int(rng.integers(0, 300)))
    if kind == 1:  # a few out-of-band buffers, some larger than a read-ahead
        sizes = rng.integers(0, 200_000, size=int(rng.integers(1, 4)))
        buffers = [rng.integers(0, 256, size=int(n), dtype=np.uint8).tobytes() for n in sizes]
        return ("buffers", i, buffers)
    if kind == 2:  # a header larger than the read-ahead
        return ("big header", i, list(range(int(rng.integers(10_000, 40_000)))))
    return ("segment", i, rng.integers(0, 256, size=int(rng.integers(1, 5000)),
                                       dtype=np.uint8).tobytes())


def _send(channel: Channel, msg: tuple, kept: list) -> None:
    if msg[0] == "buffers":
        channel.send((*msg[:2], oob(msg[2])))
    elif msg[0] == "segment":
        segment = shm.Segment.holding([msg[2]], f"t{msg[1]}")
        kept.append(segment)
        channel.send((*msg[:2], segment))
    else:
        channel.send(msg)


def _check(got: tuple, want: tuple) -> None:
    assert got[:2] == want[:2]
    if want[0] == "buffers":
        assert [bytes(b) for b in got[2]] == want[2]
    elif want[0] == "segment":
        assert bytes(got[2].views()[0]) == want[2]
    else:
        assert got == want


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_messages_written_before_any_is_read(seed):
    rng = np.random.default_rng(seed)
    writer, reader = _pair()
    messages = [_message(rng, i) for i in range(60)]
    kept: list = []
    thread = threading.Thread(target=lambda: [_send(writer, m, kept) for m in messages])
    thread.start()  # (the socket buffer may fill: the writer waits for the reader)
    for want in messages:
        _check(reader.recv(), want)
    thread.join()
    assert not reader.buffered()


def test_read_ahead_is_reported_and_served_without_the_socket():
    writer, reader = _pair()
    for i in range(5):
        writer.send(("m", i))
    assert reader.recv() == ("m", 0)
    assert reader.buffered()  # the others came with the first read
    reader.sock.setblocking(False)  # nothing more is read from the socket for them
    assert [reader.recv() for _ in range(4)] == [("m", i) for i in range(1, 5)]
    assert not reader.buffered()


def test_segments_keep_to_their_message():
    writer, reader = _pair()
    data = [bytes([i]) * (100 + i) for i in range(6)]
    kept = [shm.Segment.holding([d], f"s{i}") for i, d in enumerate(data)]
    for i, segment in enumerate(kept):  # with and without descriptors, interleaved
        writer.send(("seg", segment))
        writer.send(("plain", i))
    for i, d in enumerate(data):
        tag, segment = reader.recv()
        assert tag == "seg" and bytes(segment.views()[0]) == d
        assert reader.recv() == ("plain", i)


def test_a_closed_peer_ends_the_channel():
    writer, reader = _pair()
    writer.send(("last",))
    writer.close()
    assert reader.recv() == ("last",)
    with pytest.raises(ChannelClosed):
        reader.recv()


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])


def test_waker_never_blocks_and_wakes_after_each_drain():
    """Many wakes before a drain (the sleeper waking itself while it handles a stream of
    messages) must not block: a blocking wake once deadlocked a rank whose buffer filled."""
    from hpcray._private.transport.pipe import Waker

    waker = Waker()
    try:
        assert not _readable(waker.fileno())
        done = threading.Event()

        def storm():
            for _ in range(100_000):  # far more than a socket buffer holds
                waker.wake()
            done.set()

        thread = threading.Thread(target=storm, daemon=True)
        thread.start()
        assert done.wait(30), "wake() blocked"
        assert _readable(waker.fileno())
        for _ in range(50):  # each drain clears it; the next wake is seen again
            waker.drain()
            assert not _readable(waker.fileno())
            waker.wake()
            assert _readable(waker.fileno())
    finally:
        waker.close()
