"""Tests of hpcray._private.core.scheduler: fixed scenarios, then random runs against brute force."""

import random

import pytest

from hpcray._private.core import scheduler as scheduler_module
from hpcray._private.core.scheduler import (
    DEFAULT,
    SPREAD,
    Infeasible,
    InPlacementGroup,
    NodeAffinity,
    Request,
    Scheduler,
)


def make(nodes: int, per_node: int, resources: dict) -> Scheduler:
    """Ranks 0.. numbered node by node, node ids "n0", "n1", ..."""
    s = Scheduler()
    for rank in range(nodes * per_node):
        s.add_rank(rank, f"n{rank // per_node}", dict(resources))
    return s


def covers(have: dict, need: dict) -> bool:
    return all(have.get(k, 0.0) >= v - 1e-9 for k, v in need.items() if v > 0)


def approx_equal(a: dict, b: dict) -> bool:
    return all(abs(a.get(k, 0.0) - b.get(k, 0.0)) < 1e-6 for k in set(a) | set(b))


# -- DEFAULT placement, queueing, FIFO -----------------------------------------------------------

def test_default_round_robins_over_idle_ranks_then_packs():
    s = make(2, 2, {"CPU": 2})
    first = [s.try_place(Request(i, {"CPU": 1})) for i in range(4)]
    assert sorted(first) == [0, 1, 2, 3]
    second = [s.try_place(Request(i, {"CPU": 1})) for i in range(4, 8)]
    assert sorted(second) == [0, 1, 2, 3]
    assert s.try_place(Request(8, {"CPU": 1})) is None
    assert s.available_resources() == {"CPU": 0.0}


def test_request_goes_only_where_it_fits():
    s = Scheduler()
    s.add_rank(0, "a", {"CPU": 1})
    s.add_rank(1, "a", {"CPU": 4, "GPU": 1})
    assert s.try_place(Request(1, {"CPU": 2})) == 1
    assert s.try_place(Request(2, {"GPU": 1})) == 1
    assert s.try_place(Request(3, {"GPU": 1})) is None
    assert s.rank_available(1) == {"CPU": 2.0, "GPU": 0.0}
    assert s.rank_available(0) == {"CPU": 1.0}


def test_fifo_within_group_and_blocked_group_is_skipped():
    s = make(1, 1, {"CPU": 4})
    assert s.try_place(Request(0, {"CPU": 3})) == 0
    for i in (1, 2, 3):
        s.submit(Request(i, {"CPU": 2}))
    s.submit(Request(10, {"CPU": 1}))
    placed = s.schedule()
    assert [(r.id, rank) for r, rank in placed] == [(10, 0)]  # the CPU:2 group waits as a whole
    s.release(0, {"CPU": 3})
    s.release(0, {"CPU": 1})
    assert [r.id for r, _ in s.schedule()] == [1, 2]
    s.release(0, {"CPU": 2})
    assert [r.id for r, _ in s.schedule()] == [3]
    assert s.num_queued() == 0


def test_try_place_keeps_fifo_behind_queued_requests():
    s = make(1, 1, {"CPU": 1})
    assert s.try_place(Request(0, {"CPU": 1})) == 0
    s.submit(Request(1, {"CPU": 1}))
    s.release(0, {"CPU": 1})
    assert s.try_place(Request(2, {"CPU": 1})) is None  # request 1 is queued ahead
    assert s.try_place(Request(3, {"CPU": 0.5})) == 0  # another group is not held back
    s.release(0, {"CPU": 0.5})
    assert [r.id for r, _ in s.schedule()] == [1]


def test_cancel():
    s = make(1, 1, {"CPU": 1})
    s.try_place(Request(0, {"CPU": 1}))
    s.submit(Request(1, {"CPU": 1}))
    s.submit(Request(2, {"CPU": 1}))
    assert s.cancel(1) is True
    assert s.cancel(1) is False
    assert s.cancel(99) is False
    assert s.num_queued() == 1
    s.release(0, {"CPU": 1})
    assert [r.id for r, _ in s.schedule()] == [2]


def test_fractional_resources_and_tolerance():
    s = make(1, 1, {"CPU": 1, "GPU": 1})
    assert [s.try_place(Request(i, {"GPU": 0.25})) for i in range(4)] == [0, 0, 0, 0]
    assert s.try_place(Request(4, {"GPU": 0.25})) is None
    for _ in range(4):
        s.release(0, {"GPU": 0.25})
    assert [s.try_place(Request(i, {"GPU": 1 / 3})) for i in range(5, 8)] == [0, 0, 0]
    assert s.try_place(Request(8, {"GPU": 0.01})) is None
    for _ in range(3):
        s.release(0, {"GPU": 1 / 3})
    assert s.rank_available(0) == {"CPU": 1.0, "GPU": 1.0}
    assert s.try_place(Request(9, {"CPU": 0.1 + 0.2})) == 0
    assert s.try_place(Request(10, {"CPU": 0.7})) == 0  # 1 - 0.30000000000000004 >= 0.7 - 1e-9


def test_zero_valued_keys_are_ignored():
    s = make(1, 1, {"CPU": 1})
    assert s.try_place(Request(0, {"CPU": 1, "GPU": 0})) == 0
    assert s.try_place(Request(1, {})) == 0  # needs nothing: fits even a full rank


def test_blocked_group_does_not_rescan_every_rank(monkeypatch):
    s = make(2500, 4, {"CPU": 1})
    for i in range(10_001):
        s.submit(Request(i, {"CPU": 1}))
    assert len(s.schedule()) == 10_000
    calls = 0
    real_covers = scheduler_module._covers

    def counting_covers(amounts, shape):
        nonlocal calls
        calls += 1
        return real_covers(amounts, shape)

    monkeypatch.setattr(scheduler_module, "_covers", counting_covers)
    assert s.schedule() == []
    s.release(1234, {"CPU": 1})
    assert [(r.id, rank) for r, rank in s.schedule()] == [(10_000, 1234)]
    assert calls < 10


# -- SPREAD and node affinity --------------------------------------------------------------------

def test_spread_prefers_nodes_with_fewest_spread_tasks():
    s = make(3, 2, {"CPU": 2})
    nodes = lambda ranks: sorted(rank // 2 for rank in ranks)
    first = [s.try_place(Request(i, {"CPU": 1}, SPREAD)) for i in range(3)]
    assert nodes(first) == [0, 1, 2]
    second = [s.try_place(Request(i, {"CPU": 1}, SPREAD)) for i in range(3, 6)]
    assert nodes(second) == [0, 1, 2]
    # a DEFAULT task does not count; a finished SPREAD task on node 1 makes node 1 the least loaded
    s.try_place(Request(6, {"CPU": 1}))
    s.release(second[1], {"CPU": 1})
    assert s.try_place(Request(7, {"CPU": 1}, SPREAD)) // 2 == second[1] // 2


def test_node_affinity_hard_waits_soft_falls_back():
    s = make(2, 1, {"CPU": 1})
    assert s.try_place(Request(0, {"CPU": 1}, NodeAffinity("n1"))) == 1
    assert s.try_place(Request(1, {"CPU": 1}, NodeAffinity("n1"))) is None
    assert s.try_place(Request(2, {"CPU": 1}, NodeAffinity("n1", soft=True))) == 0
    s.submit(Request(3, {"CPU": 1}, NodeAffinity("n1")))
    s.release(0, {"CPU": 1})
    assert s.schedule() == []  # node n0 is free, but the request must run on n1
    s.release(1, {"CPU": 1})
    assert [(r.id, rank) for r, rank in s.schedule()] == [(3, 1)]
    assert s.try_place(Request(4, {"CPU": 1}, NodeAffinity("nowhere", soft=True))) == 0
    with pytest.raises(Infeasible, match="nowhere"):
        s.check_feasible({"CPU": 1}, NodeAffinity("nowhere"))
    with pytest.raises(Infeasible, match="n0"):
        s.submit(Request(5, {"CPU": 2}, NodeAffinity("n0")))


# -- errors --------------------------------------------------------------------------------------

def test_infeasible_message_says_what_was_asked_largest_rank_and_what_to_do():
    s = Scheduler()
    s.add_rank(0, "a", {"CPU": 2})
    s.add_rank(1, "a", {"CPU": 8, "GPU": 1})
    with pytest.raises(Infeasible) as info:
        s.submit(Request(0, {"GPU": 2}))
    message = str(info.value)
    assert "'GPU': 2.0" in message and "'CPU': 8.0" in message and "Request less" in message
    assert s.num_queued() == 0
    with pytest.raises(Infeasible, match="no rank is alive"):
        Scheduler().check_feasible({"CPU": 1})
    s.check_feasible({"CPU": 8, "GPU": 1})


def test_bad_arguments_raise_value_error():
    s = make(1, 1, {"CPU": 1})
    with pytest.raises(ValueError, match="non-negative"):
        s.submit(Request(0, {"CPU": -1}))
    with pytest.raises(ValueError, match="non-negative"):
        s.check_feasible({"CPU": float("nan")})
    with pytest.raises(ValueError, match="strategy"):
        s.submit(Request(0, {"CPU": 1}, "RANDOM"))
    with pytest.raises(ValueError, match="already registered"):
        s.add_rank(0, "n0", {"CPU": 1})
    s.try_place(Request(5, {"CPU": 1}))
    s.submit(Request(6, {"CPU": 1}))
    with pytest.raises(ValueError, match="already queued"):
        s.submit(Request(6, {"CPU": 1}))
    with pytest.raises(ValueError, match="placement strategy"):
        s.create_placement_group(1, [{"CPU": 1}], "RANDOM")
    with pytest.raises(ValueError, match="bundles"):
        s.create_placement_group(1, [], "PACK")
    with pytest.raises(ValueError, match="bundles"):
        s.create_placement_group(1, [{"CPU": 0}], "PACK")
    s.create_placement_group(1, [{"CPU": 1}], "PACK")
    with pytest.raises(ValueError, match="already exists"):
        s.create_placement_group(1, [{"CPU": 1}], "PACK")
    with pytest.raises(KeyError):
        s.rank_available(3)


def test_acquire_may_go_negative_and_release_restores():
    s = make(1, 1, {"CPU": 1})
    assert s.try_place(Request(0, {"CPU": 1})) == 0
    s.release(0, {"CPU": 1})  # task 0 blocks in a nested get and lends its CPU
    assert s.try_place(Request(1, {"CPU": 1})) == 0
    s.acquire(0, {"CPU": 1})  # task 0 resumes
    assert s.rank_available(0) == {"CPU": -1.0}
    assert s.try_place(Request(2, {"CPU": 0.5})) is None
    s.release(0, {"CPU": 1})
    s.release(0, {"CPU": 1})
    assert s.rank_available(0) == {"CPU": 1.0}


# -- placement groups ----------------------------------------------------------------------------

def test_placement_group_feasibility():
    s = make(2, 2, {"CPU": 2})
    with pytest.raises(Infeasible, match="STRICT_SPREAD"):
        s.create_placement_group(1, [{"CPU": 1}] * 3, "STRICT_SPREAD")
    with pytest.raises(Infeasible, match="STRICT_PACK"):
        s.create_placement_group(2, [{"CPU": 2}] * 3, "STRICT_PACK")
    with pytest.raises(Infeasible, match="CPU"):
        s.create_placement_group(3, [{"CPU": 3}], "PACK")
    assert not s.placement_group_ready(1) and s.placement_group_ranks(1) == []
    s.create_placement_group(4, [{"CPU": 1}, {"CPU": 2}], "PACK")
    with pytest.raises(ValueError, match="out of range"):  # a wrong argument, as in Ray
        s.check_feasible({"CPU": 3}, InPlacementGroup(4, 2))
    for strategy, match in [(InPlacementGroup(99), "does not exist"),
                            (InPlacementGroup(4, 0), "does not fit in bundle 0"),
                            (InPlacementGroup(4, -1), "does not fit in any bundle")]:
        with pytest.raises(Infeasible, match=match):
            s.check_feasible({"CPU": 1.5} if strategy.bundle_index == 0 else {"CPU": 3}, strategy)
    s.check_feasible({"CPU": 1.5}, InPlacementGroup(4, 1))


def test_placement_group_strategies():
    s = make(3, 2, {"CPU": 2})
    node = lambda rank: rank // 2
    s.create_placement_group(1, [{"CPU": 1}] * 3, "PACK")
    assert len({node(r) for r in s.placement_group_ranks(1)}) == 1
    assert len(set(s.placement_group_ranks(1))) == 2
    s.create_placement_group(2, [{"CPU": 1}] * 3, "STRICT_SPREAD")
    assert sorted(node(r) for r in s.placement_group_ranks(2)) == [0, 1, 2]
    s.create_placement_group(3, [{"CPU": 1}, {"CPU": 1}], "SPREAD")
    assert len({node(r) for r in s.placement_group_ranks(3)}) == 2
    s.create_placement_group(4, [{"CPU": 1}] * 2, "STRICT_PACK")
    assert len({node(r) for r in s.placement_group_ranks(4)}) == 1
    assert s.available_resources() == {"CPU": 2.0}


def test_placement_group_pending_until_resources_free():
    s = make(2, 1, {"CPU": 2})
    assert s.try_place(Request(0, {"CPU": 2})) == 0
    s.create_placement_group(1, [{"CPU": 2}, {"CPU": 2}], "STRICT_SPREAD")
    assert not s.placement_group_ready(1)
    assert s.available_resources() == {"CPU": 2.0}  # all or nothing: no partial reservation
    s.submit(Request(1, {"CPU": 1}, InPlacementGroup(1)))
    assert s.schedule() == []
    s.release(0, {"CPU": 2})
    placed = s.schedule()
    assert s.placement_group_ready(1) and sorted(s.placement_group_ranks(1)) == [0, 1]
    assert [r.id for r, _ in placed] == [1]


def test_tasks_in_placement_group_use_the_bundle():
    s = make(2, 1, {"CPU": 4})
    s.create_placement_group(1, [{"CPU": 2}, {"CPU": 1}], "STRICT_SPREAD")
    bundle_rank = s.placement_group_ranks(1)
    assert s.available_resources() == {"CPU": 5.0}
    assert s.try_place(Request(0, {"CPU": 1}, InPlacementGroup(1, 1))) == bundle_rank[1]
    assert s.try_place(Request(1, {"CPU": 1}, InPlacementGroup(1, 1))) is None  # bundle 1 busy
    s.submit(Request(1, {"CPU": 1}, InPlacementGroup(1, 1)))
    assert s.try_place(Request(2, {"CPU": 2}, InPlacementGroup(1))) == bundle_rank[0]
    assert s.available_resources() == {"CPU": 5.0}  # the cluster's free CPUs did not move
    assert s.schedule() == []
    s.release(bundle_rank[1], {"CPU": 1}, InPlacementGroup(1, 1))
    assert [(r.id, rank) for r, rank in s.schedule()] == [(1, bundle_rank[1])]
    # release with bundle -1 finds the bundle on that rank
    s.release(bundle_rank[0], {"CPU": 2}, InPlacementGroup(1))
    assert s.try_place(Request(3, {"CPU": 2}, InPlacementGroup(1, 0))) == bundle_rank[0]
    with pytest.raises(ValueError, match="not on rank"):
        s.release(bundle_rank[1], {"CPU": 1}, InPlacementGroup(1, 0))


def test_blocked_task_in_placement_group_lends_its_bundle():
    s = make(2, 1, {"CPU": 2})
    s.create_placement_group(1, [{"CPU": 1}], "PACK")
    [rank] = s.placement_group_ranks(1)
    pg = InPlacementGroup(1)
    assert s.try_place(Request(0, {"CPU": 1}, pg)) == rank
    s.release(rank, {"CPU": 1}, pg)  # task 0 blocks in a nested get
    assert s.try_place(Request(1, {"CPU": 1}, pg)) == rank
    s.acquire(rank, {"CPU": 1}, pg)  # task 0 resumes: the bundle is overdrawn
    assert s.try_place(Request(2, {"CPU": 0.5}, pg)) is None
    assert s.rank_available(rank) == {"CPU": 1.0}  # the rank outside the bundle is untouched
    with pytest.raises(ValueError, match="no bundle"):
        s.release(1 - rank, {"CPU": 1}, pg)
    s.release(rank, {"CPU": 1}, pg)
    s.release(rank, {"CPU": 1}, pg)
    assert s.try_place(Request(3, {"CPU": 1}, pg)) == rank


def test_remove_placement_group_returns_what_tasks_do_not_hold():
    s = make(1, 1, {"CPU": 4})
    s.create_placement_group(1, [{"CPU": 3}], "PACK")
    assert s.try_place(Request(0, {"CPU": 2}, InPlacementGroup(1))) == 0
    s.submit(Request(1, {"CPU": 2}, InPlacementGroup(1)))
    s.remove_placement_group(1)
    assert s.rank_available(0) == {"CPU": 2.0}
    [(request, why)] = s.take_infeasible()
    assert request.id == 1 and "placement group 1 does not exist" in why
    assert s.take_infeasible() == []
    s.release(0, {"CPU": 2}, InPlacementGroup(1))  # the task finishes after its group is gone
    assert s.rank_available(0) == {"CPU": 4.0}
    s.remove_placement_group(1)  # removing twice is harmless
    assert not s.placement_group_ready(1)


# -- dead ranks ----------------------------------------------------------------------------------

def test_remove_rank_reports_requests_that_became_infeasible():
    s = Scheduler()
    s.add_rank(0, "a", {"CPU": 1})
    s.add_rank(1, "b", {"CPU": 4})
    s.add_rank(2, "c", {"CPU": 1})
    s.try_place(Request(0, {"CPU": 4}))
    s.submit(Request(1, {"CPU": 4}))
    s.submit(Request(2, {"CPU": 1}, NodeAffinity("b")))
    s.submit(Request(3, {"CPU": 1}, NodeAffinity("b", soft=True)))
    s.remove_rank(1)
    reasons = {r.id: why for r, why in s.take_infeasible()}
    assert sorted(reasons) == [1, 2]
    assert "'CPU': 4.0" in reasons[1] and "'b'" in reasons[2]
    assert s.cluster_resources() == {"CPU": 2.0}
    s.release(1, {"CPU": 4})  # a late completion from the dead rank is ignored
    s.remove_rank(1)
    assert [r.id for r, _ in s.schedule()] == [3]


def test_remove_rank_places_lost_bundles_again():
    s = make(3, 1, {"CPU": 2})
    s.create_placement_group(1, [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    before = s.placement_group_ranks(1)
    spare = ({0, 1, 2} - set(before)).pop()
    s.remove_rank(before[0])
    assert s.placement_group_ranks(1) == [spare, before[1]]
    s.create_placement_group(2, [{"CPU": 1}] * 2, "STRICT_SPREAD")
    s.submit(Request(0, {"CPU": 1}, InPlacementGroup(2)))
    s.remove_rank(spare)  # now only one node is left: group 2 can never be placed again
    assert not s.placement_group_ready(2)
    assert [(r.id, "STRICT_SPREAD" in why) for r, why in s.take_infeasible()] == [(0, True)]


# -- random runs against a brute-force model -----------------------------------------------------

SHAPES = [{"CPU": 1}, {"CPU": 1}, {"CPU": 2}, {"CPU": 0.5}, {"GPU": 0.25}, {"CPU": 1, "GPU": 1},
          {"CPU": 1, "mem": 0.3}, {}, {"CPU": 16}, {"TPU": 1}]
PG_STRATEGIES = ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]


class Model:
    """Drives a Scheduler with random operations and checks it against brute force."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.s = Scheduler()
        self.total: dict[int, dict] = {}
        self.node: dict[int, str] = {}
        self.running: dict[int, tuple] = {}  # request id -> (request, rank, pg id or None)
        self.queues: dict[tuple, list] = {}  # group key -> queued requests, oldest first
        self.pgs: dict[int, tuple] = {}  # pg id -> (strategy, bundles, rank of each bundle or None)
        self.next_id = 0
        self.next_pg = 0
        for _ in range(self.rng.randint(2, 8)):
            self.add_rank()

    # brute force
    def key(self, req):
        return tuple(sorted((k, float(v)) for k, v in req.resources.items() if v > 0)), req.strategy

    def free(self, rank) -> dict:
        free = dict(self.total[rank])
        held = [req.resources for req, r, pg in self.running.values()
                if r == rank and pg not in self.pgs]
        held += [b for _, bundles, ranks in self.pgs.values()
                 for b, r in zip(bundles, ranks) if r == rank]
        for amounts in held:
            for k, v in amounts.items():
                free[k] = free.get(k, 0.0) - v
        return free

    def ranks_on(self, node):
        return [r for r in self.total if self.node[r] == node]

    def pg_possible(self, strategy, bundles, ranks) -> bool:
        if not all(any(covers(t, b) for t in self.total.values()) for b in bundles):
            return False
        if strategy == "STRICT_SPREAD":
            return len(bundles) <= len(set(self.node.values()))
        if strategy == "STRICT_PACK":
            placed = {self.node[r] for r in ranks if r is not None}
            for node in placed or set(self.node.values()):
                totals = [self.total[r] for r in self.ranks_on(node)]
                need = {}
                for b in bundles:
                    for k, v in b.items():
                        need[k] = need.get(k, 0.0) + v
                have = {k: sum(t.get(k, 0.0) for t in totals) for k in need}
                if covers(have, need) and all(any(covers(t, b) for t in totals) for b in bundles):
                    return True
            return False
        return True

    def feasible(self, resources, strategy) -> bool:
        if isinstance(strategy, InPlacementGroup):
            if strategy.pg_id not in self.pgs:
                return False
            pg_strategy, bundles, ranks = self.pgs[strategy.pg_id]
            if not -1 <= strategy.bundle_index < len(bundles):
                return False
            wanted = bundles if strategy.bundle_index == -1 else [bundles[strategy.bundle_index]]
            return any(covers(b, resources) for b in wanted) and (
                None not in ranks or self.pg_possible(pg_strategy, bundles, ranks))
        if isinstance(strategy, NodeAffinity) and not strategy.soft:
            return any(covers(self.total[r], resources) for r in self.ranks_on(strategy.node_id))
        return any(covers(t, resources) for t in self.total.values())

    def fits_now(self, resources, strategy) -> bool:
        """Whether a request of this kind could be placed right now (conservative inside a pg)."""
        if isinstance(strategy, InPlacementGroup):
            _, bundles, ranks = self.pgs[strategy.pg_id]
            if None in ranks:
                return False
            busy = {r for _, r, pg in self.running.values() if pg == strategy.pg_id}
            index = strategy.bundle_index
            indices = range(len(bundles)) if index == -1 else [index]
            return any(ranks[i] not in busy and covers(bundles[i], resources) for i in indices)
        if isinstance(strategy, NodeAffinity) and not strategy.soft:
            candidates = self.ranks_on(strategy.node_id)
        else:
            candidates = list(self.total)
        return any(covers(self.free(r), resources) for r in candidates)

    # operations
    def add_rank(self):
        rank = max(self.total, default=-1) + 1
        resources = {"CPU": self.rng.choice([1, 2, 4])}
        if self.rng.random() < 0.4:
            resources["GPU"] = self.rng.choice([1, 2])
        if self.rng.random() < 0.3:
            resources["mem"] = 0.5
        node = f"n{self.rng.randint(0, 3)}"
        self.s.add_rank(rank, node, resources)
        self.total[rank] = {k: float(v) for k, v in resources.items()}
        self.node[rank] = node

    def random_request(self) -> Request:
        self.next_id += 1
        roll = self.rng.random()
        if roll < 0.45:
            strategy = DEFAULT
        elif roll < 0.6:
            strategy = SPREAD
        elif roll < 0.75:
            node = self.rng.choice([*self.node.values(), "gone"])
            strategy = NodeAffinity(node, soft=self.rng.random() < 0.5)
        else:
            strategy = InPlacementGroup(self.rng.randint(0, 5), self.rng.randint(-1, 2))
        return Request(self.next_id, dict(self.rng.choice(SHAPES)), strategy)

    def record(self, req, rank):
        strategy = req.strategy
        assert rank in self.total
        if isinstance(strategy, NodeAffinity) and not strategy.soft:
            assert self.node[rank] == strategy.node_id
        pg = None
        if isinstance(strategy, InPlacementGroup):
            pg = strategy.pg_id
            ranks = self.pgs[pg][2]
            if strategy.bundle_index >= 0:
                assert rank == ranks[strategy.bundle_index]
            else:
                assert rank in ranks
        self.running[req.id] = (req, rank, pg)

    def submit(self):
        req = self.random_request()
        expected = self.feasible(req.resources, req.strategy)
        try:
            self.s.submit(req)
        except Infeasible as exc:
            assert not expected and str(exc)
            return
        assert expected
        self.queues.setdefault(self.key(req), []).append(req)

    def try_place(self):
        req = self.random_request()
        if not self.feasible(req.resources, req.strategy):
            return
        queued = self.key(req) in self.queues
        rank = self.s.try_place(req)
        if rank is None:
            assert queued or not self.fits_now(req.resources, req.strategy)
        else:
            assert not queued
            self.record(req, rank)

    def schedule(self):
        placed = self.s.schedule()
        self.sync_pgs()
        for req, rank in placed:
            queue = self.queues[self.key(req)]
            assert queue[0] is req  # FIFO within a group
            queue.pop(0)
            if not queue:
                del self.queues[self.key(req)]
            self.record(req, rank)
        self.check()
        for queue in self.queues.values():  # nothing left behind that fits now
            assert not self.fits_now(queue[0].resources, queue[0].strategy)
        return placed

    def release(self, req_id):
        req, rank, _ = self.running.pop(req_id)
        strategy = req.strategy if isinstance(req.strategy, InPlacementGroup) else None
        self.s.release(rank, req.resources, strategy)

    def cancel(self):
        key = self.rng.choice(list(self.queues))
        req = self.queues[key].pop(self.rng.randrange(len(self.queues[key])))
        if not self.queues[key]:
            del self.queues[key]
        assert self.s.cancel(req.id)
        assert not self.s.cancel(req.id)

    def create_pg(self):
        self.next_pg += self.rng.randint(1, 2)  # ids are never reused; some are never created
        pg_id = self.next_pg
        bundles = [dict(self.rng.choice(SHAPES[:7]) or {"CPU": 1})
                   for _ in range(self.rng.randint(1, 3))]
        strategy = self.rng.choice(PG_STRATEGIES)
        expected = self.pg_possible(strategy, bundles, [None] * len(bundles))
        try:
            self.s.create_placement_group(pg_id, bundles, strategy)
        except Infeasible:
            assert not expected
            return
        assert expected
        self.pgs[pg_id] = (strategy, bundles, [None] * len(bundles))
        self.sync_pgs()

    def remove_pg(self, pg_id):
        self.s.remove_placement_group(pg_id)
        del self.pgs[pg_id]  # tasks still running in it now hold their rank's resources
        self.take_infeasible()

    def remove_rank(self):
        rank = self.rng.choice(list(self.total))
        self.s.remove_rank(rank)
        del self.total[rank], self.node[rank]
        for req_id in [i for i, (_, r, _) in self.running.items() if r == rank]:
            req, _, _ = self.running.pop(req_id)
            self.s.release(rank, req.resources)  # ignored: the rank is gone
        for _, _, ranks in self.pgs.values():
            ranks[:] = [None if r == rank else r for r in ranks]
        self.sync_pgs()
        self.take_infeasible()

    def take_infeasible(self):
        for req, why in self.s.take_infeasible():
            assert why and not self.feasible(req.resources, req.strategy)
            queue = self.queues[self.key(req)]
            queue.remove(req)
            if not queue:
                del self.queues[self.key(req)]
        for queue in self.queues.values():
            assert self.feasible(queue[0].resources, queue[0].strategy)

    def sync_pgs(self):
        for pg_id, (strategy, bundles, ranks) in self.pgs.items():
            if not self.s.placement_group_ready(pg_id):
                assert self.s.placement_group_ranks(pg_id) == []
                continue
            now = self.s.placement_group_ranks(pg_id)
            # bundles that were placed stay where they are
            assert all(old is None or old == new for old, new in zip(ranks, now))
            ranks[:] = now
            nodes = [self.node[r] for r in now]
            if strategy == "STRICT_PACK":
                assert len(set(nodes)) == 1
            if strategy == "STRICT_SPREAD":
                assert len(set(nodes)) == len(nodes)

    def check(self):
        for rank in self.total:
            free = self.free(rank)
            assert all(v >= -1e-6 for v in free.values()), (rank, free)  # never over-allocated
            assert approx_equal(self.s.rank_available(rank), free)
        for pg_id, (_, bundles, ranks) in self.pgs.items():
            for rank in set(ranks) - {None}:
                capacity = {}
                for b, r in zip(bundles, ranks):
                    for k, v in b.items():
                        capacity[k] = capacity.get(k, 0.0) + v * (r == rank)
                for req, r, pg in self.running.values():
                    if pg == pg_id and r == rank:
                        for k, v in req.resources.items():
                            capacity[k] -= v
                assert all(v >= -1e-6 for v in capacity.values())
        totals = [self.total[r] for r in self.total]
        assert approx_equal(self.s.cluster_resources(),
                            {k: sum(t.get(k, 0.0) for t in totals) for k in ("CPU", "GPU", "mem")})
        frees = [self.free(r) for r in self.total]
        assert approx_equal(self.s.available_resources(),
                            {k: sum(f.get(k, 0.0) for f in frees) for k in ("CPU", "GPU", "mem")})
        assert self.s.num_queued() == sum(len(q) for q in self.queues.values())

    def run(self, steps: int):
        removals = 0
        for _ in range(steps):
            roll = self.rng.random()
            if roll < 0.35:
                self.submit()
            elif roll < 0.55:
                self.schedule()
            elif roll < 0.75 and self.running:
                self.release(self.rng.choice(list(self.running)))
            elif roll < 0.83:
                self.try_place()
            elif roll < 0.87 and self.queues:
                self.cancel()
            elif roll < 0.92:
                self.create_pg()
            elif roll < 0.95 and self.pgs:
                self.remove_pg(self.rng.choice(list(self.pgs)))
            elif roll < 0.97 and removals < 2 and len(self.total) > 2:
                removals += 1
                self.remove_rank()
            elif roll < 0.99:
                self.add_rank()
            self.check()

    def drain(self):
        """With every task released, everything still queued gets placed (after removing pgs)."""
        for req_id in list(self.running):
            self.release(req_id)
        for _ in range(200):
            if not self.queues:
                break
            placed = self.schedule()
            for req, _ in placed:
                self.release(req.id)
            if not placed and self.pgs:  # reservations may be what is in the way
                self.remove_pg(next(iter(self.pgs)))
        assert not self.queues and self.s.num_queued() == 0
        for pg_id in list(self.pgs):
            self.remove_pg(pg_id)
        for req_id in list(self.running):
            self.release(req_id)
        assert approx_equal(self.s.available_resources(), self.s.cluster_resources())
        for rank, total in self.total.items():
            assert approx_equal(self.s.rank_available(rank), total)


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_match_brute_force(seed):
    model = Model(seed)
    model.run(400)
    model.drain()


# -- queueing ahead: take_next, only_waiting, fits_now; the feasibility cache -------------------

def test_take_next_pops_oldest_of_its_shape_only_while_nothing_else_waits():
    s = make(1, 2, {"CPU": 1, "GPU": 1})
    assert s.take_next({"CPU": 1}) is None  # nothing queued
    for i in range(2):
        assert s.try_place(Request(i, {"CPU": 1})) is not None
    for i in (10, 11, 12):
        s.submit(Request(i, {"CPU": 1}))
    assert s.only_waiting({"CPU": 1}) and not s.only_waiting({"GPU": 1})
    assert s.take_next({"CPU": 1}).id == 10  # oldest first, and out of the queue
    assert s.num_queued() == 2
    s.submit(Request(20, {"GPU": 1, "CPU": 1}))  # another shape waits: it is owed the CPUs
    assert not s.only_waiting({"CPU": 1})
    assert s.take_next({"CPU": 1}) is None
    assert s.cancel(20)
    assert s.take_next({"CPU": 1}).id == 11
    s.submit(Request(30, {"CPU": 1}, SPREAD))  # not DEFAULT: never queued ahead
    assert s.take_next({"CPU": 1}) is None
    assert s.cancel(30) and s.take_next({"CPU": 1}).id == 12
    assert s.take_next({"CPU": 1}) is None and s.num_queued() == 0


def test_take_next_waits_for_placement_groups_being_reserved():
    s = make(1, 1, {"CPU": 1})
    assert s.try_place(Request(0, {"CPU": 1})) == 0
    s.submit(Request(1, {"CPU": 1}))
    s.create_placement_group(7, [{"CPU": 1}], "PACK")
    assert not s.placement_group_ready(7)
    assert s.take_next({"CPU": 1}) is None  # the group is owed the freed CPU first


def test_fits_now_allocates_nothing():
    rng = random.Random(5)
    s = make(2, 2, {"CPU": 2})
    placed = []
    for i in range(8):
        need = {"CPU": rng.choice([0.5, 1.0, 2.0])}
        before = s.available_resources()
        fits = s.fits_now(need)
        assert s.available_resources() == before
        rank = s.try_place(Request(i, need))
        assert fits == (rank is not None)
        if rank is not None:
            placed.append((rank, need))


def test_feasibility_is_cached_until_a_rank_goes():
    s = make(2, 1, {"CPU": 1})
    s.add_rank(5, "big", {"CPU": 8})
    s.check_feasible({"CPU": 4})  # only rank 5 can hold it
    s.check_feasible({"CPU": 4})
    s.remove_rank(5)
    with pytest.raises(Infeasible):
        s.check_feasible({"CPU": 4})
    with pytest.raises(ValueError):
        s.check_feasible({"CPU": -1})
    with pytest.raises(ValueError):  # a bad amount is refused every time, not cached
        s.check_feasible({"CPU": -1})
