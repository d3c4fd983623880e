"""A head and its workers as threads of this process, over the loopback transport.

One limit: ObjectRef events are per process (hpcray.object_ref), so here every runtime drains
the same ones and reference counts are the process's, not each rank's: tests of freeing belong
in real jobs."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

from hpcray._private.core import context
from hpcray._private.core.config import load
from hpcray._private.core.head import HeadRuntime
from hpcray._private.core.runtime import RankInfo
from hpcray._private.core.worker import WorkerRuntime
from hpcray._private.transport.loopback import LoopbackHub


@contextlib.contextmanager
def loopback_job(workers: int = 2, **config) -> Iterator[HeadRuntime]:
    """Yields the head, installed as this process's runtime, with ``workers`` worker threads;
    stops them all on exit (and fails if one does not stop). Workers run code in their own
    threads (execution "thread"): executor processes are tested in real jobs."""
    config.setdefault("execution", "thread")
    hub = LoopbackHub(workers + 1)
    host, pid = socket.gethostname(), os.getpid()
    cfg = load(**config)
    ranks = [RankInfo(r, host, pid, "node-0", host, {"CPU": 1.0} if r else {})
             for r in range(workers + 1)]
    started = threading.Barrier(workers + 1)
    errors: list[BaseException] = []

    def serve(rank: int) -> None:
        try:
            worker = WorkerRuntime(hub.transport(rank), cfg, ranks, "loopback")
        finally:
            started.wait()
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(r,), daemon=True, name=f"worker-{r}")
               for r in range(1, workers + 1)]
    for t in threads:
        t.start()
    started.wait()
    head = HeadRuntime(hub.transport(0), cfg, ranks, "loopback")
    head.start()
    context.set_current(head)
    try:
        yield head
    finally:
        context.set_current(None)
        head.shutdown()
        for t in threads:
            t.join(timeout=10)
        assert not any(t.is_alive() for t in threads), "a loopback worker did not stop"
        assert not errors, errors
