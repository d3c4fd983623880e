"""``@serve.batch``: calls with one item each are gathered into one call with a list."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any


class _BatchQueue:
    """Items waiting for one event loop's next batch of a function."""

    def __init__(self, fn: Callable, max_batch_size: int, wait_s: float):
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.items: list[tuple[Any, asyncio.Future]] = []
        self.has_items = asyncio.Event()
        self.full = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.run())
        self.sizes: list[int] = []  # batch sizes run, kept short

    def put(self, item: Any) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.items.append((item, fut))
        self.has_items.set()
        if len(self.items) >= self.max_batch_size:
            self.full.set()
        return fut

    async def run(self) -> None:
        while True:
            await self.has_items.wait()
            if len(self.items) < self.max_batch_size and self.wait_s > 0:
                try:
                    await asyncio.wait_for(self.full.wait(), self.wait_s)
                except asyncio.TimeoutError:
                    pass
            self.full.clear()
            batch, self.items = self.items[:self.max_batch_size], self.items[self.max_batch_size:]
            if not self.items:
                self.has_items.clear()
            elif len(self.items) >= self.max_batch_size:
                self.full.set()
            self.sizes = [*self.sizes[-99:], len(batch)]
            await self.call(batch)

    async def call(self, batch: list) -> None:
        futures = [fut for _, fut in batch]
        try:
            results = self.fn([item for item, _ in batch])
            if inspect.isawaitable(results):
                results = await results
            results = list(results)
            if len(results) != len(batch):
                raise TypeError(f"@serve.batch function {self.fn.__qualname__} returned "
                                f"{len(results)} results for a batch of {len(batch)}: it must "
                                "return one result per input, in order")
        except Exception as exc:  # noqa: BLE001 - every caller in the batch gets the error
            for fut in futures:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for fut, result in zip(futures, results):
            if not fut.done():
                fut.set_result(result)


def batch(_fn: Callable | None = None, *, max_batch_size: int = 10,
          batch_wait_timeout_s: float = 0.01) -> Callable:
    """Ray Serve's ``@serve.batch`` for async functions and methods taking a list."""
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or \
            max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
    if not isinstance(batch_wait_timeout_s, (int, float)) or batch_wait_timeout_s < 0:
        raise ValueError(f"batch_wait_timeout_s must be a number >= 0, got "
                         f"{batch_wait_timeout_s!r}")

    def wrap(fn: Callable) -> Callable:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@serve.batch needs an async function; make {fn.__qualname__} "
                            "'async def'")
        params = list(inspect.signature(fn).parameters)
        is_method = bool(params) and params[0] == "self"
        attr = f"__serve_batch_{fn.__name__}"

        def queue_for(owner: Any) -> _BatchQueue:
            loop = asyncio.get_running_loop()
            queues = owner.__dict__.setdefault(attr, {}) if is_method else wrapper._queues
            key = id(loop)
            q = queues.get(key)
            if q is None:
                target = functools.partial(fn, owner) if is_method else fn
                q = queues[key] = _BatchQueue(target, max_batch_size, batch_wait_timeout_s)
            return q

        @functools.wraps(fn)
        async def wrapper(*args):
            if is_method:
                if len(args) != 2:
                    raise TypeError(f"{fn.__qualname__} takes exactly one item per call")
                owner, item = args
            else:
                if len(args) != 1:
                    raise TypeError(f"{fn.__qualname__} takes exactly one item per call")
                owner, item = None, args[0]
            return await queue_for(owner).put(item)

        wrapper._queues = {}
        wrapper.__serve_batch__ = (max_batch_size, batch_wait_timeout_s)
        return wrapper

    return wrap(_fn) if _fn is not None else wrap


def batch_sizes(owner: Any, method_name: str) -> list[int]:
    """The sizes of the last batches a batched method ran (for tests and status)."""
    queues = owner.__dict__.get(f"__serve_batch_{method_name}", {})
    return [n for q in queues.values() for n in q.sizes]
