"""Point-to-point device channels (NCCL) between two ranks on distinct GPUs.

One channel per direction and peer: a two-rank communicator created on first use (the sender
makes the unique id and sends it with its first transfer) and a thread that runs the channel's
sends or receives in the order the OBJDATA messages went out. NCCL's calls block until the
peer takes part, so they never run on a progress thread, and since each direction has its own
communicator and stream, two ranks sending to each other never wait on each other.
"""

from __future__ import annotations

import queue
import threading

#: seconds a receiver waits for the sender's side of a transfer before giving up
RECV_TIMEOUT = 300.0


class Done(threading.Event):
    """Set when a channel operation has finished (``error`` says if it failed)."""

    error: BaseException | None = None


class Channel:
    """One direction between this rank and a peer: ``rank`` 0 sends, 1 receives."""

    def __init__(self, backend, uid, rank: int, label: str):
        self.backend = backend
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(uid, rank), name=label,
                                       daemon=True)
        self.thread.start()

    def submit(self, op: str, buf) -> Done:
        """Queues a send or recv of buf (kept alive until it completes)."""
        done = Done()
        self.jobs.put((op, buf, done))
        return done

    def close(self) -> None:
        self.jobs.put(None)

    def _run(self, uid, rank: int) -> None:
        comm = None
        try:
            comm = self.backend.nccl_comm(uid, rank)
        except Exception as exc:  # noqa: BLE001 - every queued transfer reports it
            self.error = exc
        while True:
            job = self.jobs.get()
            if job is None:
                return
            op, buf, done = job
            try:
                if self.error is not None:
                    raise self.error
                self.backend.nccl_op(comm, op, buf)
            except Exception as exc:  # noqa: BLE001 - handed to whoever waits on done
                done.error = exc
                self.error = self.error or exc
            del buf, job
            done.set()
