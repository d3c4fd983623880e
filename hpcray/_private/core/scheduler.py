"""Resource scheduler of the head rank: decides which MPI rank runs each task, actor and bundle.

Pure bookkeeping, no MPI. The head registers ranks (add_rank / remove_rank), queues requests
(submit, or try_place for the fast path), calls schedule() to get (request, rank) decisions whose
resources are then allocated, and gives resources back with release().

Why a decision stays cheap as the number of ranks grows:

* Free resources live in a _Pool (one for the ranks, one per placement group for its bundles).
  Per resource name it keeps the slots that have some of it free, least recently chosen first.
  A DEFAULT choice scans the shortest of these lists from the front and moves what it looked at
  to the back (a rotating cursor), so the first slot it looks at usually fits.
* Queued requests are grouped by (shape, strategy). Once a group finds nothing that fits it is
  "blocked": only slots given resources since then can fit it, so it only looks at those
  (pool.freed, reset by every schedule()) instead of scanning every rank again.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ...exceptions import InfeasibleError

DEFAULT = "DEFAULT"
SPREAD = "SPREAD"
PACK = "PACK"
STRICT_PACK = "STRICT_PACK"
STRICT_SPREAD = "STRICT_SPREAD"
PLACEMENT_STRATEGIES = (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD)

_EPS = 1e-9

Shape = tuple[tuple[str, float], ...]
"""A resource dict in canonical, hashable form: sorted (name, amount) pairs, amounts > 0 only."""


@dataclass(frozen=True)
class NodeAffinity:
    """Run on a rank of node_id; when soft, fall back to any rank if that node is full now."""

    node_id: str
    soft: bool = False


@dataclass(frozen=True)
class InPlacementGroup:
    """Run inside bundle bundle_index of placement group pg_id (-1: any of its bundles)."""

    pg_id: int
    bundle_index: int = -1


@dataclass
class Request:
    """A task or actor waiting for resources.

    strategy: DEFAULT, SPREAD, a NodeAffinity or an InPlacementGroup.
    """

    id: int
    resources: dict[str, float]
    strategy: object = DEFAULT


class Infeasible(InfeasibleError):
    """No live rank (or bundle) can ever satisfy the request, however long it waits."""


_SHAPES: dict[tuple, Shape] = {}  # resource items -> their Shape: a job uses a few


def _shape(resources: dict[str, float]) -> Shape:
    """Validates a resource dict and returns its Shape (amounts <= 1e-9 count as zero)."""
    key = tuple(resources.items())
    shape = _SHAPES.get(key)
    if shape is not None:
        return shape
    for name, amount in resources.items():
        if not amount >= 0:
            raise ValueError(f"resource {name!r} must be a non-negative number, got {amount!r}")
    shape = tuple(sorted((name, float(amount))
                         for name, amount in resources.items() if amount > _EPS))
    if len(_SHAPES) >= 4096:
        _SHAPES.clear()
    _SHAPES[key] = shape
    return shape


shape_of = _shape  # for callers that group requests as the scheduler does


def _checked(strategy: object) -> object:
    """Returns strategy if it is one the scheduler knows, else raises ValueError."""
    if isinstance(strategy, (NodeAffinity, InPlacementGroup)) or strategy in (DEFAULT, SPREAD):
        return strategy
    raise ValueError(f"unknown scheduling strategy {strategy!r}: use DEFAULT, SPREAD, "
                     "NodeAffinity(node_id, soft) or InPlacementGroup(pg_id, bundle_index)")


def _covers(amounts: dict[str, float], shape: Shape) -> bool:
    """True when amounts has at least shape of every resource (within 1e-9)."""
    for name, amount in shape:
        if amounts.get(name, 0.0) < amount - _EPS:
            return False
    return True


def _snap(value: float) -> float:
    """Rounds float noise such as 0.1 + 0.2 - 0.3 to exactly zero."""
    return 0.0 if abs(value) < _EPS else value


def _total(dicts: Iterable[dict[str, float]]) -> dict[str, float]:
    """Sum of resource dicts, per name."""
    total: dict[str, float] = {}
    for amounts in dicts:
        for name, amount in amounts.items():
            total[name] = total.get(name, 0.0) + amount
    return total


def _too_big(what: str, shape: Shape, capacities: list[dict[str, float]], where: str) -> str:
    """Infeasible message: what was asked, the largest capacity there is, and what to do."""
    gpus = dict(shape).get("GPU")
    if gpus and not any(capacity.get("GPU") for capacity in capacities):
        return f"{what} asks for {gpus:g} GPU. {no_gpu_hint()}"
    largest = max(capacities, key=lambda capacity: sum(capacity.values()), default=None)
    return (f"{what} asks for {dict(shape)}, but no live rank{where} has that much in total "
            f"(largest rank: {largest if largest is not None else 'none, no rank is alive'}). "
            "Request less, or start the job with ranks that provide these resources.")


class _Pool:
    """Free resources of numbered slots: the ranks, or the bundles of one placement group."""

    def __init__(self) -> None:
        self.free: dict[int, dict[str, float]] = {}
        self.freed: list[int] = []  # slots given resources since the last schedule(), in order
        self._slots: OrderedDict[int, None] = OrderedDict()  # least recently chosen first
        self._having: dict[str, OrderedDict[int, None]] = {}  # name -> slots with some of it free

    def add(self, slot: int, resources: dict[str, float]) -> None:
        self.free[slot] = {}
        self._slots[slot] = None
        self.change(slot, resources.items(), +1)

    def remove(self, slot: int) -> None:
        del self.free[slot], self._slots[slot]
        for having in self._having.values():
            having.pop(slot, None)

    def fits(self, slot: int, shape: Shape) -> bool:
        free = self.free.get(slot)
        return free is not None and _covers(free, shape)

    def change(self, slot: int, amounts: Iterable[tuple[str, float]], sign: int) -> None:
        """Adds (sign +1) or takes (sign -1) amounts to or from the slot's free resources."""
        free = self.free[slot]
        for name, amount in amounts:
            value = _snap(free.get(name, 0.0) + sign * amount)
            free[name] = value
            having = self._having.get(name)
            if having is None:
                having = self._having[name] = OrderedDict()
            if value > 0:
                having.setdefault(slot)
            else:
                having.pop(slot, None)
        if sign > 0:
            self.freed.append(slot)

    def find(self, shape: Shape) -> int | None:
        """Round robin: the least recently chosen slot that fits; what it looked at goes last."""
        candidates = min((self._having.get(name, OrderedDict()) for name, _ in shape),
                         key=len, default=self._slots)
        looked_at = []
        found = None
        for slot in candidates:
            looked_at.append(slot)
            if _covers(self.free[slot], shape):
                found = slot
                break
        for slot in looked_at:
            candidates.move_to_end(slot)
        return found


@dataclass
class _Rank:
    node: str
    total: dict[str, float]
    profile: Shape
    spread: Counter[Shape] = field(default_factory=Counter)  # SPREAD requests running, by shape


@dataclass
class _Group:
    """Queued requests with one shape and strategy, oldest first."""

    shape: Shape
    strategy: object
    queue: OrderedDict[int, Request] = field(default_factory=OrderedDict)
    blocked: bool = False  # found nothing that fits: only slots freed since can fit it
    cursor: int = 0  # how far into pool.freed it has looked during this schedule()


@dataclass
class _PlacementGroup:
    strategy: str
    bundles: list[Shape]
    ranks: list[int | None]  # rank reserving each bundle, None while it is not placed
    pool: _Pool = field(default_factory=_Pool)  # free resources of the placed bundles
    on_rank: dict[int, list[int]] = field(default_factory=dict)  # rank -> its bundle indices

    @property
    def ready(self) -> bool:
        return None not in self.ranks


class Scheduler:
    """Tracks the resources of every rank and decides where queued requests run. Not thread-safe."""

    def __init__(self) -> None:
        self._ranks: dict[int, _Rank] = {}
        self._nodes: dict[str, list[int]] = {}  # node -> its live ranks
        self._profiles: Counter[Shape] = Counter()  # distinct rank capacities, for feasibility
        self._cluster = _Pool()
        self._spread_load: dict[str, int] = {}  # node -> SPREAD requests running there
        self._nodes_by_load: list[OrderedDict[str, None]] = [OrderedDict()]
        self._queues: dict[tuple[Shape, object], _Group] = {}
        self._queued: dict[int, _Group] = {}  # request id -> its group
        self._infeasible: list[tuple[Request, str]] = []
        self._pgs: dict[int, _PlacementGroup] = {}
        self._feasible: set[Shape] = set()  # DEFAULT shapes some live rank can hold

    # -- ranks ---------------------------------------------------------------------------------
    def add_rank(self, rank: int, node_id: str, resources: dict[str, float]) -> None:
        """Registers a live rank on node node_id with its total resources."""
        if rank in self._ranks:
            raise ValueError(f"rank {rank} is already registered")
        profile = _shape(resources)
        info = _Rank(node_id, {name: float(amount) for name, amount in resources.items()}, profile)
        self._ranks[rank] = info
        self._cluster.add(rank, info.total)
        self._profiles[profile] += 1
        if node_id not in self._nodes:
            self._nodes[node_id] = []
            self._spread_load[node_id] = 0
            self._nodes_by_load[0][node_id] = None
        self._nodes[node_id].append(rank)

    def remove_rank(self, rank: int) -> None:
        """Forgets a dead rank and its capacity; its placement-group bundles are placed again.

        Queued requests that can no longer ever run are reported by take_infeasible().
        Unknown or already removed ranks are ignored.
        """
        info = self._ranks.pop(rank, None)
        if info is None:
            return
        self._feasible.clear()
        self._cluster.remove(rank)
        self._profiles[info.profile] -= 1
        if not self._profiles[info.profile]:
            del self._profiles[info.profile]
        self._shift_spread_load(info.node, -sum(info.spread.values()))
        node_ranks = self._nodes[info.node]
        node_ranks.remove(rank)
        if not node_ranks:
            del self._nodes[info.node]
            del self._nodes_by_load[self._spread_load.pop(info.node)][info.node]
        for pg in self._pgs.values():
            lost = pg.on_rank.pop(rank, [])
            for index in lost:
                pg.pool.remove(index)
                pg.ranks[index] = None
            if lost:
                self._reserve(pg)
        self._drop_infeasible()

    # -- requests ------------------------------------------------------------------------------
    def check_feasible(self, resources: dict[str, float], strategy: object = DEFAULT) -> None:
        """Raises Infeasible if no live rank (or bundle) could ever satisfy the request.

        Judged by total capacity, not by what is free now. Also raises Infeasible for a hard
        NodeAffinity to a node without live ranks and for an unknown placement group; raises
        ValueError for negative amounts, an unknown strategy or a bundle index outside the
        group (as Ray: a wrong argument, not a wait that can never end).
        """
        strategy, shape = _checked(strategy), _shape(resources)
        if shape in self._feasible and strategy == DEFAULT:
            return
        if isinstance(strategy, InPlacementGroup):
            pg = self._pgs.get(strategy.pg_id)
            if pg is not None and not -1 <= strategy.bundle_index < len(pg.bundles):
                raise ValueError(self._bundle_reason(shape, strategy))
        reason = self._infeasible_reason(shape, strategy)
        if reason is not None:
            raise Infeasible(reason)
        if strategy == DEFAULT:
            self._feasible.add(shape)

    def submit(self, req: Request) -> None:
        """Queues req for schedule(); raises Infeasible (see check_feasible) or ValueError."""
        if req.id in self._queued:
            raise ValueError(f"request {req.id} is already queued")
        key = (_shape(req.resources), _checked(req.strategy))
        group = self._queues.get(key)
        if group is None:  # a queued group is known feasible: removals re-check it
            reason = self._infeasible_reason(*key)
            if reason is not None:
                raise Infeasible(reason)
            group = self._queues[key] = _Group(*key)
        group.queue[req.id] = req
        self._queued[req.id] = group

    def schedule(self) -> list[tuple[Request, int]]:
        """Reserves pending placement groups, then places as many queued requests as fit now.

        Returns (request, rank) pairs; their resources are allocated. Requests of one group
        (same shape and strategy) are placed oldest first, and a group whose oldest request does
        not fit is skipped as a whole. Groups that got resources go to the back of the line, so
        one busy group does not always take freed resources first.
        """
        if self._cluster.freed:
            for pg in self._pgs.values():
                if not pg.ready:
                    self._reserve(pg)
        placed: list[tuple[Request, int]] = []
        for key, group in list(self._queues.items()):
            group.cursor = 0
            placed_before = len(placed)
            while group.queue and (rank := self._place(group)) is not None:
                _, req = group.queue.popitem(last=False)
                del self._queued[req.id]
                placed.append((req, rank))
            if len(placed) > placed_before:
                del self._queues[key]
                if group.queue:
                    self._queues[key] = group
        self._cluster.freed.clear()
        for pg in self._pgs.values():
            pg.pool.freed.clear()
        return placed

    def try_place(self, req: Request) -> int | None:
        """Places req at once, without queueing, if it fits now and no request of its group waits.

        Returns the rank (resources allocated), or None: then submit() it.
        """
        key = (_shape(req.resources), _checked(req.strategy))
        if key in self._queues:
            return None
        return self._place(_Group(*key))

    def take_next(self, resources: dict[str, float]) -> Request | None:
        """The oldest queued DEFAULT request of this shape, removed from the queue, while no
        other request or placement group waits (nothing else is owed the resources of a task
        of this shape when it ends); None otherwise."""
        key = (_shape(resources), DEFAULT)
        group = self._queues.get(key)
        if group is None or not self.only_waiting(resources):
            return None
        _, req = group.queue.popitem(last=False)
        del self._queued[req.id]
        if not group.queue:
            del self._queues[key]
        return req

    def only_waiting(self, resources: dict[str, float]) -> bool:
        """Whether no request but DEFAULT ones of this shape and no placement group waits."""
        queues = self._queues
        if len(queues) > 1 or (queues and (_shape(resources), DEFAULT) not in queues):
            return False
        return all(pg.ready for pg in self._pgs.values())

    def fits_now(self, resources: dict[str, float]) -> bool:
        """Whether some rank has this much free now (nothing is allocated)."""
        shape = _shape(resources)
        return any(_covers(free, shape) for free in self._cluster.free.values())

    def cancel(self, req_id: int) -> bool:
        """Removes a queued request; True if it was queued."""
        group = self._queued.pop(req_id, None)
        if group is None:
            return False
        del group.queue[req_id]
        if not group.queue:
            del self._queues[group.shape, group.strategy]
        return True

    def release(self, rank: int, resources: dict[str, float],
                pg: InPlacementGroup | None = None) -> None:
        """Gives back resources a request held on rank (a finished or blocked task).

        They go to the request's bundle when pg names a live placement group (bundle_index -1:
        a bundle of that group on rank which has that much in use), else to the rank itself.
        Ignored for a dead rank.
        """
        info = self._ranks.get(rank)
        if info is None:
            return
        shape = _shape(resources)
        pool, slot = self._holder(rank, shape, pg, taking=False)
        pool.change(slot, shape, +1)
        if pool is self._cluster and info.spread[shape] > 0:
            info.spread[shape] -= 1
            self._shift_spread_load(info.node, -1)

    def acquire(self, rank: int, resources: dict[str, float],
                pg: InPlacementGroup | None = None) -> None:
        """Takes resources on rank (or its bundle of pg) even if they are not free: may go negative.

        Used when a task that released its resources while blocked in a nested get resumes.
        Ignored for a dead rank.
        """
        if rank not in self._ranks:
            return
        shape = _shape(resources)
        pool, slot = self._holder(rank, shape, pg, taking=True)
        pool.change(slot, shape, -1)

    def take_infeasible(self) -> list[tuple[Request, str]]:
        """Returns, and forgets, the queued requests that became infeasible, with the reason."""
        infeasible, self._infeasible = self._infeasible, []
        return infeasible

    def num_queued(self) -> int:
        """Number of queued requests."""
        return len(self._queued)

    # -- placement groups ----------------------------------------------------------------------
    def create_placement_group(self, pg_id: int, bundles: list[dict[str, float]],
                               strategy: str) -> None:
        """Reserves each bundle on one rank, all or nothing, now or in a later schedule().

        strategy: PACK (as few ranks and nodes as possible), SPREAD (distinct nodes when
        possible), STRICT_PACK (all on one node) or STRICT_SPREAD (all on distinct nodes).
        Raises Infeasible when the live ranks can never hold it, ValueError on bad arguments.
        """
        if pg_id in self._pgs:
            raise ValueError(f"placement group {pg_id} already exists")
        if strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(f"unknown placement strategy {strategy!r}: "
                             f"use one of {PLACEMENT_STRATEGIES}")
        shapes = [_shape(bundle) for bundle in bundles]
        if not shapes or not all(shapes):
            raise ValueError("a placement group needs bundles, each asking for some resource: "
                             f"{bundles!r}")
        pg = _PlacementGroup(strategy, shapes, [None] * len(shapes))
        reason = self._placement_group_reason(pg)
        if reason is not None:
            raise Infeasible(f"placement group {pg_id}: {reason}")
        self._pgs[pg_id] = pg
        self._reserve(pg)

    def placement_group_ready(self, pg_id: int) -> bool:
        """True when every bundle is reserved (False for unknown or removed groups)."""
        pg = self._pgs.get(pg_id)
        return pg is not None and pg.ready

    def placement_group_ranks(self, pg_id: int) -> list[int]:
        """The rank of each bundle; [] while pending (or for unknown or removed groups)."""
        if not self.placement_group_ready(pg_id):
            return []
        return [rank for rank in self._pgs[pg_id].ranks if rank is not None]

    def remove_placement_group(self, pg_id: int) -> None:
        """Frees the group's unused reservations; its queued requests become infeasible.

        What its tasks still hold comes back to the rank with their later release(..., pg=...).
        Unknown or already removed groups are ignored.
        """
        pg = self._pgs.pop(pg_id, None)
        if pg is None:
            return
        for index, rank in enumerate(pg.ranks):
            if rank is not None:
                self._cluster.change(rank, pg.pool.free[index].items(), +1)
        self._drop_infeasible()

    # -- queries -------------------------------------------------------------------------------
    def cluster_resources(self) -> dict[str, float]:
        """Total resources of the live ranks."""
        return _total(info.total for info in self._ranks.values())

    def available_resources(self) -> dict[str, float]:
        """Free resources of the live ranks (placement-group reservations are not free)."""
        return _total(self._cluster.free.values())

    def rank_available(self, rank: int) -> dict[str, float]:
        """Free resources of one live rank; KeyError for others."""
        if rank not in self._ranks:
            raise KeyError(f"rank {rank} is not a live rank")
        return dict(self._cluster.free[rank])

    # -- placing requests ----------------------------------------------------------------------
    def _place(self, group: _Group) -> int | None:
        """Allocates one request of group where it fits now; returns the rank, or None."""
        if isinstance(group.strategy, InPlacementGroup):
            return self._place_in_bundle(group, group.strategy)
        rank = self._choose_rank(group)
        if rank is not None:
            self._cluster.change(rank, group.shape, -1)
            if group.strategy == SPREAD:
                info = self._ranks[rank]
                info.spread[group.shape] += 1
                self._shift_spread_load(info.node, +1)
        return rank

    def _choose_rank(self, group: _Group) -> int | None:
        strategy = group.strategy
        if isinstance(strategy, NodeAffinity):
            rank = self._first_fit(self._nodes.get(strategy.node_id, []), group.shape)
            if rank is not None or not strategy.soft:
                return rank
        if strategy == SPREAD:
            return self._choose_spread(group)
        return self._find(self._cluster, group)

    def _find(self, pool: _Pool, group: _Group) -> int | None:
        """Round-robin choice of a slot of pool that fits group.

        A blocked group only looks at the slots freed since the last schedule().
        """
        if group.blocked:
            return self._next_freed_fit(pool, group)
        slot = pool.find(group.shape)
        group.blocked = slot is None
        return slot

    def _next_freed_fit(self, pool: _Pool, group: _Group) -> int | None:
        """The first slot freed since the last schedule() that fits group, from group.cursor on."""
        while group.cursor < len(pool.freed):
            slot = pool.freed[group.cursor]
            if pool.fits(slot, group.shape):
                return slot
            group.cursor += 1  # it will not fit again before the next schedule(): skip it for good
        return None

    def _choose_spread(self, group: _Group) -> int | None:
        """A fitting rank on the node running the fewest SPREAD requests; ties round robin.

        Looks at nodes by increasing load, so its cost grows with the number of full nodes that
        run fewer SPREAD requests than the one chosen.
        """
        if group.blocked and self._next_freed_fit(self._cluster, group) is None:
            return None
        for nodes in self._nodes_by_load:
            for node in nodes:
                rank = self._least_spread_fit(self._nodes[node], group.shape)
                if rank is not None:
                    return rank
        group.blocked = True
        return None

    def _place_in_bundle(self, group: _Group, target: InPlacementGroup) -> int | None:
        pg = self._pgs.get(target.pg_id)
        if pg is None or not pg.ready:
            return None
        if target.bundle_index >= 0:
            index = target.bundle_index if pg.pool.fits(target.bundle_index, group.shape) else None
        else:
            index = self._find(pg.pool, group)
        if index is None:
            return None
        pg.pool.change(index, group.shape, -1)
        return pg.ranks[index]

    def _least_spread_fit(self, ranks: Iterable[int], shape: Shape) -> int | None:
        """Within a node, the fitting rank running the fewest SPREAD requests."""
        fitting = [rank for rank in ranks if self._cluster.fits(rank, shape)]
        return min(fitting, key=lambda r: sum(self._ranks[r].spread.values()), default=None)

    def _first_fit(self, ranks: Iterable[int], shape: Shape) -> int | None:
        return next((rank for rank in ranks if self._cluster.fits(rank, shape)), None)

    def _shift_spread_load(self, node: str, delta: int) -> None:
        """Changes the SPREAD load of node; it goes to the back of the nodes with its new load."""
        if not delta:
            return
        load = self._spread_load[node]
        del self._nodes_by_load[load][node]
        load += delta
        while len(self._nodes_by_load) <= load:
            self._nodes_by_load.append(OrderedDict())
        self._nodes_by_load[load][node] = None
        self._spread_load[node] = load

    def _holder(self, rank: int, shape: Shape, pg: InPlacementGroup | None,
                taking: bool) -> tuple[_Pool, int]:
        """The pool and slot a request on rank takes its resources from (or gives them back to)."""
        group = self._pgs.get(pg.pg_id) if pg is not None else None
        if group is None:
            return self._cluster, rank
        indices = group.on_rank.get(rank, [])
        if pg.bundle_index >= 0:
            if pg.bundle_index not in indices:
                raise ValueError(
                    f"bundle {pg.bundle_index} of placement group {pg.pg_id} is not on rank {rank}")
            return group.pool, pg.bundle_index
        if not indices:
            raise ValueError(f"placement group {pg.pg_id} has no bundle on rank {rank}")
        for index in indices:
            free = group.pool.free[index]
            in_use = {name: amount - free.get(name, 0.0) for name, amount in group.bundles[index]}
            if _covers(free if taking else in_use, shape):
                return group.pool, index
        return group.pool, indices[0]

    # -- placement-group reservation -----------------------------------------------------------
    def _reserve(self, pg: _PlacementGroup) -> bool:
        """Tries to reserve every unplaced bundle of pg now, all or nothing; True on success."""
        if pg.strategy in (PACK, STRICT_PACK):
            for node in self._pack_nodes(pg):
                ranks = self._nodes[node]
                if self._reserve_each(pg, lambda shape, ranks=ranks: self._first_fit(ranks, shape)):
                    return True
            if pg.strategy == STRICT_PACK:
                return False
            return self._reserve_each(pg, lambda shape: self._near_bundles(pg, shape))
        strict = pg.strategy == STRICT_SPREAD
        return self._reserve_each(pg, lambda shape: self._on_new_node(pg, shape, strict))

    def _reserve_each(self, pg: _PlacementGroup, choose: Callable[[Shape], int | None]) -> bool:
        """Reserves each unplaced bundle, largest first, on the rank choose() picks.

        If choose() finds no rank for one of them, the reservations made so far are undone.
        """
        unplaced = sorted((index for index, rank in enumerate(pg.ranks) if rank is None),
                          key=lambda index: -sum(amount for _, amount in pg.bundles[index]))
        for index in unplaced:
            rank = choose(pg.bundles[index])
            if rank is None:
                for undo in unplaced:
                    if pg.ranks[undo] is not None:
                        self._cluster.change(pg.ranks[undo], pg.bundles[undo], +1)
                        pg.ranks[undo] = None
                return False
            self._cluster.change(rank, pg.bundles[index], -1)
            pg.ranks[index] = rank
        for index in unplaced:
            pg.pool.add(index, dict(pg.bundles[index]))
            pg.on_rank.setdefault(pg.ranks[index], []).append(index)
        return True

    def _bundle_nodes(self, pg: _PlacementGroup) -> list[str]:
        """Nodes holding the placed bundles of pg, without repeats."""
        return list(dict.fromkeys(self._ranks[rank].node for rank in pg.ranks if rank is not None))

    def _pack_nodes(self, pg: _PlacementGroup) -> list[str]:
        """Nodes to try for putting all unplaced bundles of a PACK group on one node."""
        return self._bundle_nodes(pg) or list(self._nodes)

    def _near_bundles(self, pg: _PlacementGroup, shape: Shape) -> int | None:
        """PACK fallback: a rank already holding a bundle, then one on the same nodes, then any."""
        placed = [rank for rank in pg.ranks if rank is not None]
        nearby = placed + [rank for node in self._bundle_nodes(pg) for rank in self._nodes[node]]
        rank = self._first_fit(nearby, shape)
        return rank if rank is not None else self._cluster.find(shape)

    def _on_new_node(self, pg: _PlacementGroup, shape: Shape, strict: bool) -> int | None:
        """SPREAD: a rank on a node without bundles of pg; unless strict, any rank if none fits."""
        used = set(self._bundle_nodes(pg))
        for node, ranks in self._nodes.items():
            if node not in used:
                rank = self._first_fit(ranks, shape)
                if rank is not None:
                    return rank
        return None if strict else self._cluster.find(shape)

    # -- feasibility ---------------------------------------------------------------------------
    def _infeasible_reason(self, shape: Shape, strategy: object) -> str | None:
        """Why a request can never run on the live ranks, or None if it can."""
        if isinstance(strategy, InPlacementGroup):
            return self._bundle_reason(shape, strategy)
        where = ""
        if isinstance(strategy, NodeAffinity) and not strategy.soft:
            ranks = self._nodes.get(strategy.node_id)
            if not ranks:
                return (f"request {dict(shape)} has a hard affinity to node {strategy.node_id!r}, "
                        "which has no live rank. Use a live node id, or "
                        "NodeAffinity(node_id, soft=True).")
            capacities = [self._ranks[rank].total for rank in ranks]
            where = f" of node {strategy.node_id!r}"
        else:
            capacities = [dict(profile) for profile in self._profiles]
        if any(_covers(capacity, shape) for capacity in capacities):
            return None
        return _too_big("request", shape, capacities, where)

    def _bundle_reason(self, shape: Shape, target: InPlacementGroup) -> str | None:
        pg = self._pgs.get(target.pg_id)
        if pg is None:
            return f"placement group {target.pg_id} does not exist (never created, or removed)"
        count = len(pg.bundles)
        if not -1 <= target.bundle_index < count:
            return (f"bundle index {target.bundle_index} is out of range: placement group "
                    f"{target.pg_id} has {count} bundles (use 0..{count - 1}, or -1 for any)")
        bundles = pg.bundles if target.bundle_index == -1 else [pg.bundles[target.bundle_index]]
        if not any(_covers(dict(bundle), shape) for bundle in bundles):
            which = "any bundle" if target.bundle_index == -1 else f"bundle {target.bundle_index}"
            return (f"request {dict(shape)} does not fit in {which} of placement group "
                    f"{target.pg_id} (bundles: {[dict(bundle) for bundle in bundles]}). "
                    "Request less, or create the group with larger bundles.")
        return None if pg.ready else self._placement_group_reason(pg)

    def _placement_group_reason(self, pg: _PlacementGroup) -> str | None:
        """Why pg can never be (fully) placed on the live ranks, or None if it may be."""
        capacities = [dict(profile) for profile in self._profiles]
        for bundle in pg.bundles:
            if not any(_covers(capacity, bundle) for capacity in capacities):
                return _too_big("a bundle", bundle, capacities, "")
        if pg.strategy == STRICT_SPREAD and len(pg.bundles) > len(self._nodes):
            return (f"STRICT_SPREAD needs {len(pg.bundles)} distinct nodes but only "
                    f"{len(self._nodes)} have live ranks. Use SPREAD, or fewer bundles.")
        if pg.strategy != STRICT_PACK:
            return None
        if any(self._node_holds(node, pg.bundles) for node in self._pack_nodes(pg)):
            return None
        node_totals = [_total(self._ranks[rank].total for rank in ranks)
                       for ranks in self._nodes.values()]
        largest = max(node_totals, key=lambda total: sum(total.values()), default=None)
        return (f"STRICT_PACK needs {_total(dict(bundle) for bundle in pg.bundles)} on one node, "
                f"which no node has in total (largest node: {largest}). "
                "Use PACK, or smaller bundles.")

    def _node_holds(self, node: str, bundles: list[Shape]) -> bool:
        """Whether the ranks of node have room for all bundles in total (necessary, not enough)."""
        capacities = [self._ranks[rank].total for rank in self._nodes[node]]
        need = tuple(_total(dict(bundle) for bundle in bundles).items())
        return _covers(_total(capacities), need) and all(
            any(_covers(capacity, bundle) for capacity in capacities) for bundle in bundles)

    def _drop_infeasible(self) -> None:
        """Moves queued requests that can no longer ever run to the infeasible list."""
        for key, group in list(self._queues.items()):
            reason = self._infeasible_reason(*key)
            if reason is not None:
                del self._queues[key]
                for req in group.queue.values():
                    del self._queued[req.id]
                    self._infeasible.append((req, reason))


def no_gpu_hint() -> str:
    """What to do when a GPU was asked for in a job without GPUs."""
    return ("This job has no GPUs: NVML found none this job may use "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). Run on "
            "GPU nodes (e.g. sbatch --gpus-per-node=N), or declare GPUs with "
            "hpcray.init(num_gpus=N) or HPCRAY_NUM_GPUS=N.")
