"""Serialization: pickle protocol 5 with out-of-band buffers, cloudpickle for code.

A serialized value is ``(header, buffers)``: ``header`` is the pickle stream and
``buffers`` the raw memory of large contiguous arrays, sent as MPI buffers and
never copied into the pickle.
"""

from __future__ import annotations

import io
import pickle
import threading
import types
from collections import ChainMap
from typing import Any

import cloudpickle

from . import hooks

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
    """Small values of builtin types only: plain pickle is enough (and much cheaper) for them."""
    if type(value) in _PRIMITIVES:
        return True
    budget = 64
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _PRIMITIVES:
            continue
        if kind is tuple or kind is list:
            stack.extend(item)
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            return False
        budget -= len(item) + 1
        if budget < 0:
            return False
    return True


_cloudpickle_code_reduce = getattr(getattr(cloudpickle, "cloudpickle", None), "_code_reduce", None)


def _code_reduce(code: types.CodeType):
    """cloudpickle >= 3.1 blanks co_filename to "<dynamic-code>"; keeping it lets a remote
    traceback show the source lines of the driver's script (same file on a shared FS)."""
    ctor, args = _cloudpickle_code_reduce(code)
    return ctor, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)


class _Pickler(cloudpickle.CloudPickler):
    """CloudPickler that lets device arrays travel as DeviceBuffers, not in the pickle."""

    if _cloudpickle_code_reduce is not None:
        dispatch_table = ChainMap({types.CodeType: _code_reduce},
                                  cloudpickle.CloudPickler.dispatch_table)

    def __init__(self, file, device_types: dict, **kwargs):
        super().__init__(file, **kwargs)
        self.device_types = device_types

    def reducer_override(self, obj):
        reduce = self.device_types.get(type(obj))
        if reduce is not None:
            return reduce(obj)
        return super().reducer_override(obj)


def serialize(value: Any) -> tuple[bytes, list, list[int]]:
    """Returns (header, out-of-band buffers, ids of ObjectRefs contained in value).

    Host buffers are memoryviews; device arrays become DeviceBuffers in the same list, and
    the device has finished the work that produced them.
    """
    if _is_plain(value):
        return pickle.dumps(value, 5), [], []
    buffers: list = []
    refs: list[int] = []
    outer = _collector()
    _local.refs = refs
    device_types = hooks.devices.device_table()
    try:
        stream = io.BytesIO()
        pickler = _Pickler(stream, device_types, protocol=5,
                           buffer_callback=lambda b: buffers.append(b.raw()))
        if device_types:
            with hooks.devices.collecting(buffers):
                pickler.dump(value)
            backends = {b.backend for b in buffers if type(b) is hooks.devices.DeviceBuffer}
            for backend in backends:
                backend.synchronize()
        else:
            pickler.dump(value)
    finally:
        _local.refs = outer
    return stream.getvalue(), buffers, refs


def deserialize(header: bytes, buffers: list | tuple = ()) -> Any:
    """Inverse of serialize; buffers are used in place (numpy arrays are not copied)."""
    if buffers and any(type(b) in hooks.devices.DEVICE_ENTRIES for b in buffers):
        host, on_device = hooks.devices.split(buffers)
        with hooks.devices.rebuilding(on_device):
            return pickle.loads(header, buffers=host)
    return pickle.loads(header, buffers=buffers)


def has_device(buffers) -> bool:
    """Whether a serialized value holds device memory (it then never travels inline)."""
    return any(type(b) in hooks.devices.DEVICE_ENTRIES for b in buffers)


def fits_inline(header: bytes, buffers: list, limit: int) -> bool:
    return nbytes(header, buffers) <= limit and not has_device(buffers)


def own(buffers: list) -> list:
    """Private copies of a value's buffers (put() and borrowed arguments)."""
    return [b.copy() if type(b) in hooks.devices.DEVICE_ENTRIES else bytearray(b) for b in buffers]


def inline_blob(value: Any, error: bool = False) -> tuple[bytes, list[bytes], bool]:
    """A small value (or an exception to raise) as it travels inside a control message."""
    header, buffers, _ = serialize(value)
    return header, [bytes(b) for b in buffers], error


def dumps_code(obj: Any) -> bytes:
    """Pickles a function or class by value where needed (``__main__``, closures)."""
    stream = io.BytesIO()
    _Pickler(stream, {}, protocol=5).dump(obj)
    return stream.getvalue()


def nbytes(header: bytes, buffers: list) -> int:
    """Size of a serialized value: its pickle stream and out-of-band buffers."""
    return len(header) + sum(buffer_size(b) for b in buffers)


def buffer_size(buf) -> int:
    return buf.nbytes if type(buf) in hooks.devices.DEVICE_ENTRIES else memoryview(buf).nbytes
