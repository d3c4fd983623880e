"""Serialization: pickle protocol 5 with out-of-band buffers, cloudpickle for code.

A serialized value is ``(header, buffers)``: ``header`` is the pickle stream and
``buffers`` the raw memory of large contiguous arrays, sent as MPI buffers and
never copied into the pickle.
"""

from __future__ import annotations

import io
import pickle
import threading
from typing import Any

import cloudpickle

_PRIMITIVES = (int, float, str, bytes, bool, type(None))
_local = threading.local()


def _collector() -> list | None:
    return getattr(_local, "refs", None)


def note_ref(object_id: int) -> None:
    """Called by ObjectRef.__reduce__: records refs nested inside the value being serialized."""
    refs = _collector()
    if refs is not None:
        refs.append(object_id)


def _is_plain(value: Any) -> bool:
    kind = type(value)
    if kind in _PRIMITIVES:
        return True
    if kind is tuple or kind is list:
        return len(value) < 16 and all(type(v) in _PRIMITIVES for v in value)
    return False


def serialize(value: Any) -> tuple[bytes, list[memoryview], list[int]]:
    """Returns (header, out-of-band buffers, ids of ObjectRefs contained in value)."""
    if _is_plain(value):
        return pickle.dumps(value, 5), [], []
    buffers: list[memoryview] = []
    refs: list[int] = []
    outer = _collector()
    _local.refs = refs
    try:
        stream = io.BytesIO()
        pickler = cloudpickle.CloudPickler(stream, protocol=5,
                                           buffer_callback=lambda b: buffers.append(b.raw()))
        pickler.dump(value)
    finally:
        _local.refs = outer
    return stream.getvalue(), buffers, refs


def deserialize(header: bytes, buffers: list | tuple = ()) -> Any:
    """Inverse of serialize; buffers are used in place (numpy arrays are not copied)."""
    return pickle.loads(header, buffers=buffers)


def inline_blob(value: Any, error: bool = False) -> tuple[bytes, list[bytes], bool]:
    """A small value (or an exception to raise) as it travels inside a control message."""
    header, buffers, _ = serialize(value)
    return header, [bytes(b) for b in buffers], error


def dumps_code(obj: Any) -> bytes:
    """Pickles a function or class by value where needed (``__main__``, closures)."""
    return cloudpickle.dumps(obj, protocol=5)


def nbytes(header: bytes, buffers: list) -> int:
    """Size of a serialized value: its pickle stream and out-of-band buffers."""
    return len(header) + sum(memoryview(b).nbytes for b in buffers)
