"""What the layers above core plug into it.

Core knows host memory only. ``hpcray._private.device.registry`` installs itself as
``devices`` when it is imported (the job's start-up imports it), which makes device arrays
travel out of band beside the pickle and move with the transfer paths of
``hpcray._private.device``. Until then every buffer is host memory.
"""

from __future__ import annotations

from typing import Any


class _NoTransfers:
    """Device transfers of a rank that can hold no device memory."""

    released: tuple = ()
    fencing: bool = False

    def flush(self) -> None:
        pass

    def release(self, tokens: list) -> None:
        pass


class HostOnly:
    """The device hooks before any device library is registered."""

    DEVICE_ENTRIES: tuple = ()

    @staticmethod
    def device_table() -> dict:
        return {}

    @staticmethod
    def transfers(transport: Any, ranks: list, config: Any) -> Any:
        return _NoTransfers()


devices: Any = HostOnly


def is_device(buf: Any) -> bool:
    """Whether a serialized value's buffer is device memory (or its host copy)."""
    return type(buf) in devices.DEVICE_ENTRIES


#: head service path -> what a worker rank does with that service's notices (see on_notice)
notice_handlers: dict[str, Any] = {}


def on_notice(path: str, callback: Any) -> None:
    """Runs ``callback(payload)`` for each NOTICE the head sends this rank from the head
    service ``path`` (hpcray.collective's rendezvous: a group member died). It runs in the
    rank's progress loop: it must be quick and must not wait for the head."""
    notice_handlers[path] = callback
