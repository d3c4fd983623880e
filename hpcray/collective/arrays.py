"""numpy views of what users pass: numpy arrays as they are, torch CPU tensors zero-copy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class Buffer:
    """A C-contiguous numpy array over the user's data; ``done()`` copies results back when
    the data could not be used in place (non-contiguous arrays, bfloat16 tensors)."""

    __slots__ = ("array", "writeback")

    def __init__(self, array: np.ndarray, writeback: Callable[[], None] | None = None):
        self.array = array
        self.writeback = writeback

    @property
    def shape(self) -> tuple:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def done(self) -> None:
        if self.writeback is not None:
            self.writeback()


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def as_buffer(x, writable: bool, what: str = "tensor") -> Buffer:
    """A Buffer over x (numpy array or torch CPU tensor); TypeError/ValueError if unusable."""
    if isinstance(x, np.ndarray):
        if writable and not x.flags.writeable:
            raise ValueError(f"{what} is read-only (as arrays from hpcray.get and task arguments "
                             "are): pass a copy")
        if x.flags.c_contiguous:
            return Buffer(x)
        c = np.ascontiguousarray(x)
        return Buffer(c, (lambda: np.copyto(x, c)) if writable else None)
    if _is_torch(x):
        return _torch_buffer(x, writable, what)
    module = type(x).__module__.split(".")[0]
    if module == "cupy":
        raise TypeError(f"{what} is a CuPy array: the 'mpi' backend moves host memory only; "
                        "pass a numpy array (cupy.asnumpy) or use backend='nccl' where available")
    raise TypeError(f"{what} must be a numpy array or a torch CPU tensor, got "
                    f"{type(x).__module__}.{type(x).__name__}")


def _torch_buffer(t, writable: bool, what: str) -> Buffer:
    import torch

    if t.device.type != "cpu":
        raise TypeError(f"{what} is on {t.device}: the 'mpi' backend moves CPU tensors only; move "
                        "it with .cpu() or use backend='nccl' where available")
    if t.dtype == torch.bfloat16:
        c = t.detach().float().contiguous().numpy()
        return Buffer(c, (lambda: t.copy_(torch.from_numpy(c))) if writable else None)
    if t.is_contiguous():
        return Buffer(t.detach().numpy())
    c = t.detach().contiguous().numpy()
    return Buffer(c, (lambda: t.copy_(torch.from_numpy(c))) if writable else None)
