"""Placement groups: bundles of resources reserved together (gang scheduling)."""

from __future__ import annotations

from .._private.core import context
from ..object_ref import ObjectRef

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class PlacementGroup:
    """A reservation of bundles; pass it in a PlacementGroupSchedulingStrategy."""

    def __init__(self, pg_id: int, bundles: list[dict], strategy: str, ready_ref: ObjectRef | None):
        self.id = pg_id
        self.bundle_specs = bundles
        self.strategy = strategy
        self._ready = ready_ref

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """An ObjectRef that resolves (to True) once every bundle is reserved."""
        return self._ready

    def wait(self, timeout_seconds: float = 30) -> bool:
        """True if the group became ready within the timeout."""
        ready, _ = context.runtime().wait([self._ready], 1, timeout_seconds, True)
        return bool(ready)

    def __reduce__(self):
        return (PlacementGroup, (self.id, self.bundle_specs, self.strategy, self._ready))

    def __eq__(self, other) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


def placement_group(bundles: list[dict], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None) -> PlacementGroup:
    """Reserves bundles (e.g. ``[{"CPU": 1}] * 4``) with PACK, SPREAD, STRICT_PACK or STRICT_SPREAD."""
    if strategy not in STRATEGIES:
        raise ValueError(f"placement group strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(bundles, list) or not bundles:
        raise ValueError("bundles must be a non-empty list of resource dicts")
    clean = []
    for bundle in bundles:
        if not isinstance(bundle, dict) or not bundle or any(
                not isinstance(v, (int, float)) or v < 0 for v in bundle.values()):
            raise ValueError(f"each bundle must be a non-empty dict of non-negative numbers, got "
                             f"{bundle!r}")
        clean.append({k: float(v) for k, v in bundle.items() if v > 0})
    rt = context.runtime()
    pg_id = rt.ids.next()
    ready_id = rt.ids.next()
    ready = ObjectRef(ready_id, _created=True)
    rt.request("pg_create", pg_id, clean, strategy, ready_id)
    return PlacementGroup(pg_id, clean, strategy, ready)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Releases the group's reservations; tasks queued on it fail."""
    context.runtime().request("pg_remove", placement_group.id)


def get_current_placement_group() -> PlacementGroup | None:
    return None
