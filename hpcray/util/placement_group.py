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
    """Reserves bundles (e.g. ``[{"CPU": 1}] * 4``) with PACK, SPREAD, STRICT_PACK or STRICT_SPREAD.

    ``name``: found with get_placement_group(name) in the job's namespace, unique there.
    ``lifetime``: None, as in Ray, fate-shares the group with its creator: one made by an actor
    is removed when that actor ends; one made by the driver or a task lives until the job ends
    (the job is the cluster). ``"detached"`` keeps it until the job ends whoever made it.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"placement group strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(bundles, list) or not bundles:
        raise ValueError("bundles must be a non-empty list of resource dicts")
    if not isinstance(name, str):
        raise TypeError(f"a placement group's name must be a str, got {name!r}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"placement group lifetime must be None or 'detached', got {lifetime!r}")
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
    creator = getattr(rt.local, "actor_id", 0) if lifetime is None else 0
    rt.request("pg_create", pg_id, clean, strategy, ready_id, name, rt.config.namespace, creator)
    return PlacementGroup(pg_id, clean, strategy, ready)


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The placement group created with this name in the job's namespace (ValueError if none,
    as Ray raises)."""
    if not placement_group_name:
        raise ValueError("get_placement_group() needs the group's name")
    rt = context.runtime()
    pg_id, bundles, strategy, ready_id = rt.request("pg_get", placement_group_name,
                                                    rt.config.namespace)
    return PlacementGroup(pg_id, bundles, strategy, ObjectRef(ready_id))


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Releases the group's reservations; tasks queued on it fail."""
    context.runtime().request("pg_remove", placement_group.id)


def get_current_placement_group() -> PlacementGroup | None:
    """The placement group the calling task or actor was scheduled in; None on the driver or
    outside any group."""
    rt = context.runtime()
    task_id = getattr(rt.local, "task_id", 0)
    found = rt.request("pg_current", task_id) if task_id else None
    if found is None:
        return None
    pg_id, bundles, strategy, ready_id = found
    return PlacementGroup(pg_id, bundles, strategy, ObjectRef(ready_id))
