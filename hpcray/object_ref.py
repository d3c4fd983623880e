"""ObjectRef: a handle to a value that lives on some rank."""

from __future__ import annotations

import concurrent.futures

from ._private.core import context
from ._private.core.objects import ADD, CREATED, DROP, ref_events
from ._private.core.serialization import note_ref

_append = ref_events.append


class ObjectRef:
    """A reference to an object produced by a task or ``put``; resolve it with ``hpcray.get``."""

    __slots__ = ("__weakref__", "id")

    def __init__(self, object_id: int, _created: bool = False):
        self.id = object_id
        _append((object_id, CREATED if _created else ADD))

    def __del__(self):
        _append((self.id, DROP))

    def __reduce__(self):
        note_ref(self.id)
        return (ObjectRef, (self.id,))

    def hex(self) -> str:
        return f"{self.id:016x}"

    def binary(self) -> bytes:
        return self.id.to_bytes(16, "big")  # session, rank and counter (protocol.Ids)

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"ObjectRef({self.hex()})"

    def future(self) -> concurrent.futures.Future:
        """A concurrent.futures.Future that completes with the value (no thread is started)."""
        runtime = context.current()
        if runtime is None:
            raise RuntimeError(f"{self!r}.future(): hpcray is not running; call hpcray.init()")
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def ready(ref: ObjectRef = self) -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(runtime.value_of(ref.id))
            except BaseException as exc:  # noqa: BLE001 - handed to the future
                fut.set_exception(exc)

        runtime.when_local(self.id, ready)
        return fut

    def _on_completed(self, callback) -> None:
        """Calls ``callback(value)`` once the object is ready (the exception instead, if its task
        failed), from a runtime thread: keep it quick. Ray's completion callback, which Ray's own
        libraries use."""
        self.future().add_done_callback(
            lambda fut: callback(fut.exception() if fut.exception() is not None else fut.result()))

    def __await__(self):
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()
