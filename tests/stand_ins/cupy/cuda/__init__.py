"""cupy.cuda's stand-in: every copy is done when called, so events are always done."""

from tests.stand_ins.cupy.cuda import nccl, runtime

_current = [0]  # the innermost `with Device(i)` (one for all threads, unlike CuPy)


class Device:
    """cupy.cuda.Device: Device() is the current device; `with Device(i):` makes i current."""

    def __init__(self, device=None):
        self.id = _current[-1] if device is None else int(device)

    def __enter__(self):
        _current.append(self.id)
        return self

    def __exit__(self, *exc) -> None:
        _current.pop()

    def __eq__(self, other) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


class Event:
    def __init__(self, disable_timing: bool = False):
        self.ptr = 1
        self.done = True


__all__ = ["Device", "Event", "nccl", "runtime"]
