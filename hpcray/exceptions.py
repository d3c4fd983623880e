"""Exceptions raised by hpcray, with Ray's names."""

from __future__ import annotations


class HpcrayError(Exception):
    """Base of every hpcray error."""


RayError = HpcrayError


class TaskError(HpcrayError):
    """A task or actor method raised; ``get`` re-raises it.

    The raised object is also an instance of the task's own exception class, so
    ``except ValueError`` works. ``cause`` is the original exception and the
    message carries the remote traceback, rank and host.
    """

    def __init__(self, function_name: str, traceback_str: str, cause: BaseException | None,
                 rank: int = -1, host: str = "?", pid: int = 0):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.rank = rank
        self.host = host
        self.pid = pid
        super().__init__(self._message())

    def _message(self) -> str:
        return (f"{self.function_name} failed on rank {self.rank} (host {self.host}, pid {self.pid}):\n"
                f"{self.traceback_str.rstrip()}")

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        return (TaskError, (self.function_name, self.traceback_str, self.cause, self.rank, self.host,
                            self.pid))

    def as_instanceof_cause(self) -> TaskError:
        """This error as an instance of both TaskError and the cause's class."""
        cause_cls = type(self.cause)
        if self.cause is None or isinstance(self, cause_cls) or not _subclassable(cause_cls):
            return self
        try:
            cls = _dual_class(cause_cls)
            try:
                err = cls.__new__(cls)
            except TypeError:  # a built-in base with an allocator of its own (MemoryError)
                err = BaseException.__new__(cls)
            err.__dict__.update(getattr(self.cause, "__dict__", {}))
            TaskError.__init__(err, self.function_name, self.traceback_str, self.cause, self.rank,
                               self.host, self.pid)
            err.args = (self._message(),)
            return err
        except Exception:  # noqa: BLE001 - an exotic exception class: plain TaskError
            return self


RayTaskError = TaskError

_dual_classes: dict[type, type] = {}


def _subclassable(cls: type) -> bool:
    return issubclass(cls, Exception) and not getattr(cls, "__final__", False)


def _dual_class(cause_cls: type) -> type:
    cls = _dual_classes.get(cause_cls)
    if cls is None:
        cls = type(f"TaskError({cause_cls.__name__})", (TaskError, cause_cls),
                   {"__str__": TaskError.__str__, "__reduce__": TaskError.__reduce__,
                    "__init__": TaskError.__init__})
        cls.__module__ = __name__
        _dual_classes[cause_cls] = cls
    return cls


class InfeasibleError(HpcrayError):
    """No rank of the job can ever provide what a task, actor or placement group asks for."""


class GetTimeoutError(HpcrayError, TimeoutError):
    """``get`` or ``wait`` ran out of time."""


class TaskCancelledError(HpcrayError):
    """The task was cancelled before it could finish."""


class WorkerCrashedError(HpcrayError):
    """The process running the task died (killed, crashed, or lost with its rank)."""


class OutOfMemoryError(HpcrayError):
    """The memory monitor ended the task: its node was about to run out of memory."""


class ActorDiedError(HpcrayError):
    """The actor is dead: killed, crashed in ``__init__``, or its rank died."""


RayActorError = ActorDiedError


class ObjectLostError(HpcrayError):
    """Every copy of the object was on ranks that died."""


class DeserializationError(HpcrayError):
    """An object's value could not be unpickled where it was read (its cause is chained)."""


class ObjectFreedError(HpcrayError):
    """The object was freed (for example by ``hpcray.internal_free``)."""


class DeviceUnavailableError(HpcrayError):
    """A device (CuPy) array reached a rank that has no GPU to hold it."""


class PendingCallsLimitExceeded(HpcrayError):
    """An actor call was refused at ``.remote()``: the calling process already has the
    actor's ``max_pending_calls`` calls submitted and not finished."""
