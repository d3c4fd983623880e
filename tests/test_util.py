"""Tests for hpcray.util.ActorPool and hpcray.util.queue.Queue, each run as a real hpcray job.

Each job runs many checks and prints one ``RESULT {json}`` line; the tests compare it with
what Ray gives for the same script, so a failing check names itself in the diff.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from typing import Any

RunJob = Callable[..., Any]


def _results(run_job: RunJob, code: str, n: int = 3) -> dict[str, Any]:
    """Run ``code`` as an n-rank job and return the dict it printed after ``RESULT``."""
    proc = run_job(textwrap.dedent(code), n=n)
    output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, output
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, output
    return json.loads(lines[0][len("RESULT ") :])


ACTOR_POOL_JOB = """
    import json
    import random
    import time

    import hpcray
    from hpcray.util import ActorPool

    hpcray.init()


    @hpcray.remote
    class Worker:
        def double(self, x):
            return 2 * x

        def sleep_then(self, arg):
            delay, value = arg
            time.sleep(delay)
            return value

        def fail_on_3(self, x):
            if x == 3:
                raise ValueError(f"bad input {x}")
            return x


    def double(a, v):
        return a.double.remote(v)


    def sleep_then(a, v):
        return a.sleep_then.remote(v)


    def caught(fn):
        try:
            fn()
        except Exception as exc:
            return type(exc).__name__
        return "no error"


    out = {}
    pool = ActorPool([Worker.remote() for _ in range(2)])
    out["fresh"] = [pool.has_next(), pool.has_free()]

    rng = random.Random(7)
    values = [rng.randint(-1000, 1000) for _ in range(60)]
    out["map"] = list(pool.map(double, values)) == [2 * v for v in values]
    out["map_unordered"] = sorted(pool.map_unordered(double, values)) == sorted(
        2 * v for v in values)
    out["map_empty"] = list(pool.map(double, []))
    out["map_generator_input"] = list(pool.map(double, (i for i in range(5))))

    # get_next keeps submission order; get_next_unordered returns the first finished.
    for arg in [(0.6, "slow"), (0.0, "fast")]:
        pool.submit(sleep_then, arg)
    out["busy"] = [pool.has_next(), pool.has_free()]
    out["ordered"] = [pool.get_next(), pool.get_next()]
    for arg in [(0.6, "slow"), (0.0, "fast")]:
        pool.submit(sleep_then, arg)
    out["unordered"] = [pool.get_next_unordered(), pool.get_next_unordered()]
    out["drained"] = [pool.has_next(), pool.has_free()]
    out["stop"] = caught(pool.get_next)
    out["stop_unordered"] = caught(pool.get_next_unordered)

    # get_next after get_next_unordered has skipped ahead is an error.
    for arg in [(0.6, "a"), (0.0, "b")]:
        pool.submit(sleep_then, arg)
    out["skip_first"] = pool.get_next_unordered()
    out["mixed"] = caught(pool.get_next)
    out["skip_rest"] = pool.get_next_unordered()

    # Timeouts: TimeoutError, the result stays pending unless ignore_if_timedout.
    pool.submit(sleep_then, (0.6, "late"))
    out["timeout"] = caught(lambda: pool.get_next(timeout=0.1))
    out["timeout_unordered"] = caught(lambda: pool.get_next_unordered(timeout=0.1))
    out["timeout_pending"] = [pool.has_next(), pool.get_next()]
    pool.submit(sleep_then, (0.6, "ignored"))
    out["ignored"] = caught(lambda: pool.get_next(timeout=0.1, ignore_if_timedout=True))
    out["ignored_gone"] = [pool.has_next(), pool.has_free()]
    pool.submit(sleep_then, (0.6, "ignored"))
    out["ignored_unordered"] = caught(
        lambda: pool.get_next_unordered(timeout=0.1, ignore_if_timedout=True))
    out["ignored_unordered_gone"] = pool.has_next()
    out["timeout_ok"] = next(pool.map(double, [21]))

    # A failing call re-raises its error from the getter; its actor goes back to the pool.
    pool.submit(lambda a, v: a.fail_on_3.remote(v), 3)
    try:
        pool.get_next()
        out["error"] = "no error"
    except ValueError as exc:
        out["error"] = ["ValueError", "bad input 3" in str(exc)]
    out["error_actor_back"] = [pool.has_next(), pool.has_free()]
    got = []
    try:
        for r in pool.map(lambda a, v: a.fail_on_3.remote(v), range(6)):
            got.append(r)
    except ValueError:
        got.append("ValueError")
    out["map_error"] = got
    out["map_after_error"] = list(pool.map(double, [1, 2, 3]))

    # pop_idle / push / queued submissions.
    a, b = pool.pop_idle(), pool.pop_idle()
    out["popped"] = [a is not None, b is not None, pool.pop_idle() is None, pool.has_free()]
    pool.submit(double, 5)
    out["queued"] = [pool.has_next(), pool.has_free()]
    pool.push(a)
    out["pushed"] = [pool.has_next(), pool.get_next(), pool.has_free()]
    out["push_twice"] = caught(lambda: pool.push(a))
    pool.push(b)
    pool.push(Worker.remote())
    out["grown"] = sorted(pool.map_unordered(double, range(9)))

    print("RESULT " + json.dumps(out), flush=True)
"""


def test_actor_pool(run_job: RunJob) -> None:
    got = _results(run_job, ACTOR_POOL_JOB)
    want = {
        "fresh": [False, True],
        "map": True,
        "map_unordered": True,
        "map_empty": [],
        "map_generator_input": [0, 2, 4, 6, 8],
        "busy": [True, False],
        "ordered": ["slow", "fast"],
        "unordered": ["fast", "slow"],
        "drained": [False, True],
        "stop": "StopIteration",
        "stop_unordered": "StopIteration",
        "skip_first": "b",
        "mixed": "ValueError",
        "skip_rest": "a",
        "timeout": "TimeoutError",
        "timeout_unordered": "TimeoutError",
        "timeout_pending": [True, "late"],
        "ignored": "TimeoutError",
        "ignored_gone": [False, True],
        "ignored_unordered": "TimeoutError",
        "ignored_unordered_gone": False,
        "timeout_ok": 42,
        "error": ["ValueError", True],
        "error_actor_back": [False, True],
        "map_error": [0, 1, 2, "ValueError"],
        "map_after_error": [2, 4, 6],
        "popped": [True, True, True, False],
        "queued": [False, False],
        "pushed": [True, 10, True],
        "push_twice": "ValueError",
        "grown": [0, 2, 4, 6, 8, 10, 12, 14, 16],
    }
    assert got == want


QUEUE_JOB = """
    import json
    import pickle
    import queue as std_queue
    import time

    import hpcray
    from hpcray.util.queue import Empty, Full, Queue

    hpcray.init()


    @hpcray.remote
    def producer(q, n, delay=0.0):
        time.sleep(delay)
        for i in range(n):
            q.put(i)
        return n


    @hpcray.remote
    def consumer(q, n):
        return [q.get(timeout=60) for _ in range(n)]


    def caught(fn):
        t0 = time.monotonic()
        try:
            fn()
        except Exception as exc:
            return [type(exc).__name__, round(time.monotonic() - t0, 1)]
        return ["no error", round(time.monotonic() - t0, 1)]


    def name(fn):
        return caught(fn)[0]


    out = {}
    out["subclasses"] = [issubclass(Empty, std_queue.Empty), issubclass(Full, std_queue.Full)]

    q = Queue()
    out["new"] = [q.empty(), q.full(), q.size(), q.qsize(), len(q), q.maxsize]

    # A producer task fills the queue; the driver takes the items in order.
    ref = producer.remote(q, 50)
    got = [q.get(timeout=60) for _ in range(50)]
    out["producer"] = [hpcray.get(ref), got == list(range(50)), q.empty()]
    # A blocking get with no timeout waits for a late producer.
    ref = producer.remote(q, 1, 0.5)
    out["blocking_get"] = [q.get(), hpcray.get(ref)]

    # Empty: at once without blocking, after the timeout with one.
    out["get_nowait_empty"] = caught(q.get_nowait)
    out["get_noblock_empty"] = caught(lambda: q.get(block=False))
    out["get_timeout_empty"] = caught(lambda: q.get(timeout=0.5))
    out["get_bad_timeout"] = name(lambda: q.get(timeout=-1))
    q.put("now")
    out["get_timeout_0"] = q.get(timeout=0)

    # Batches.
    q.put_nowait_batch(range(5))
    out["batch"] = [q.size(), q.get_nowait_batch(3), q.get_nowait_batch(0), q.size()]
    out["batch_too_many"] = [name(lambda: q.get_nowait_batch(3)), q.size()]
    out["batch_bad"] = [
        name(lambda: q.get_nowait_batch(-1)),
        name(lambda: q.get_nowait_batch(1.5)),
        name(lambda: q.put_nowait_batch(5)),
    ]
    out["batch_rest"] = q.get_nowait_batch(2)

    # A bounded queue: Full at once, after a timeout, and for a batch that does not fit.
    b = Queue(maxsize=2)
    b.put("a")
    b.put_nowait("b")
    out["bounded"] = [b.full(), b.size(), b.maxsize]
    out["put_nowait_full"] = caught(lambda: b.put_nowait("c"))
    out["put_noblock_full"] = caught(lambda: b.put("c", block=False))
    out["put_timeout_full"] = caught(lambda: b.put("c", timeout=0.5))
    out["put_bad_timeout"] = name(lambda: b.put("c", timeout=-1))
    out["batch_full"] = [name(lambda: b.put_nowait_batch(["c"])), b.size()]
    out["fifo"] = [b.get(), b.get_nowait(), b.empty()]
    b.put_nowait_batch(["x", "y"])
    out["batch_fits"] = [b.full(), b.get_nowait_batch(2)]
    # A blocked put goes through once a consumer task takes an item.
    b.put_nowait_batch([1, 2])
    ref = consumer.remote(b, 3)
    b.put(3, timeout=60)
    out["blocked_put"] = hpcray.get(ref, timeout=60)

    # Items of any picklable kind, and a Queue object that is itself pickled.
    q.put({"nested": [1, (2, 3)], "s": "text"})
    out["item"] = q.get()
    copy = pickle.loads(pickle.dumps(q))
    copy.put("via copy")
    out["pickled"] = [copy.maxsize, q.get(timeout=60)]

    q.shutdown()
    b.shutdown(force=True)
    out["shutdown"] = [q.actor is None, b.actor is None]
    print("RESULT " + json.dumps(out), flush=True)
"""


def test_queue(run_job: RunJob) -> None:
    got = _results(run_job, QUEUE_JOB)
    # Timed checks report [error name, seconds]. A timeout must have been waited out (a lower
    # bound, which a slow machine only helps); that the non-blocking calls do not block shows
    # in their raising at all (a blocked call would hang the job into its hard timeout).
    for key, waited in [
        ("get_nowait_empty", 0.0),
        ("get_noblock_empty", 0.0),
        ("get_timeout_empty", 0.4),
        ("put_nowait_full", 0.0),
        ("put_noblock_full", 0.0),
        ("put_timeout_full", 0.4),
    ]:
        error, seconds = got[key]
        assert seconds >= waited, (key, got[key])
        got[key] = error
    want = {
        "subclasses": [True, True],
        "new": [True, False, 0, 0, 0, 0],
        "producer": [50, True, True],
        "blocking_get": [0, 1],
        "get_nowait_empty": "Empty",
        "get_noblock_empty": "Empty",
        "get_timeout_empty": "Empty",
        "get_bad_timeout": "ValueError",
        "get_timeout_0": "now",
        "batch": [5, [0, 1, 2], [], 2],
        "batch_too_many": ["Empty", 2],
        "batch_bad": ["ValueError", "TypeError", "TypeError"],
        "batch_rest": [3, 4],
        "bounded": [True, 2, 2],
        "put_nowait_full": "Full",
        "put_noblock_full": "Full",
        "put_timeout_full": "Full",
        "put_bad_timeout": "ValueError",
        "batch_full": ["Full", 2],
        "fifo": ["a", "b", True],
        "batch_fits": [True, ["x", "y"]],
        "blocked_put": [1, 2, 3],
        "item": {"nested": [1, [2, 3]], "s": "text"},
        "pickled": [0, "via copy"],
        "shutdown": [True, True],
    }
    assert got == want


QUEUE_IN_ACTORS_JOB = """
    import json

    import hpcray
    from hpcray.util.queue import Empty, Queue

    hpcray.init()


    @hpcray.remote
    class Stage:
        # Takes numbers from one queue and puts them, doubled, on the next.

        def __init__(self, inbox, outbox):
            self.inbox, self.outbox = inbox, outbox

        def run(self, n):
            for _ in range(n):
                self.outbox.put(2 * self.inbox.get(timeout=60))
            return n

        def try_get(self):
            try:
                return self.inbox.get_nowait()
            except Empty:
                return "Empty"


    @hpcray.remote
    class AsyncRelay:
        # An async actor using put_async/get_async, as a coroutine should.

        async def relay(self, inbox, outbox, n):
            for _ in range(n):
                item = await inbox.get_async(timeout=60)
                await outbox.put_async(item + 1)
            return n

        async def poll(self, inbox):
            try:
                await inbox.get_async(block=False)
                return "item"
            except Empty:
                return "Empty"


    out = {}
    first, middle, last = Queue(), Queue(maxsize=3), Queue()
    stage = Stage.remote(first, middle)
    relay = AsyncRelay.remote()
    out["empty_in_actor"] = hpcray.get(stage.try_get.remote())
    out["empty_in_async_actor"] = hpcray.get(relay.poll.remote(last))
    n = 20
    refs = [stage.run.remote(n), relay.relay.remote(middle, last, n)]
    first.put_nowait_batch(range(n))
    got = [last.get(timeout=60) for _ in range(n)]
    out["pipeline"] = [hpcray.get(refs, timeout=60), got == [2 * i + 1 for i in range(n)]]
    out["sizes"] = [first.size(), middle.size(), last.size()]
    for q in (first, middle, last):
        q.shutdown()
    print("RESULT " + json.dumps(out), flush=True)
"""


def test_queue_between_actors(run_job: RunJob) -> None:
    got = _results(run_job, QUEUE_IN_ACTORS_JOB)
    assert got == {
        "empty_in_actor": "Empty",
        "empty_in_async_actor": "Empty",
        "pipeline": [[20, 20], True],
        "sizes": [0, 0, 0],
    }
