"""cancel(recursive=), kill(no_restart=), wait(fetch_local=), placement_group(name=,
lifetime=) at work (issue 19)."""

import os

import numpy as np
from jobkit import emit, gate, outcome, poll

import hpcray
from hpcray.util import (
    PlacementGroupSchedulingStrategy,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    remove_placement_group,
)

hpcray.init()
HERE = os.getcwd()
R = {}


def short(observed):
    return observed[:2]  # ["ok", value] or ["err", class name]


@hpcray.remote
class Registry:
    def __init__(self):
        self.refs = {}

    def add(self, key, refs):
        self.refs[key] = refs

    def get(self, key):
        return self.refs.get(key)


@hpcray.remote
def grandchild(path):
    return hpcray.get(gate.remote(path, "grandchild"), timeout=90)


@hpcray.remote
def parent(registry, key):
    path = os.path.join(HERE, key)
    kids = [gate.remote(path, 1), grandchild.remote(path)]
    hpcray.get(registry.add.remote(key, kids), timeout=60)
    return hpcray.get(kids, timeout=90)


def cancel_case(key, recursive):
    registry = Registry.remote()
    top = parent.remote(registry, key)
    kids = poll(lambda: hpcray.get(registry.get.remote(key), timeout=60), timeout=60)
    hpcray.cancel(top, recursive=recursive)
    top_out = short(outcome(lambda: hpcray.get(top, timeout=60)))
    release = os.path.join(HERE, key)
    if not recursive:  # (cancelled children must fail without it: a cancel is asynchronous)
        open(release, "w").close()
    kids_out = [short(outcome(lambda k=k: hpcray.get(k, timeout=90))) for k in kids]
    open(release, "a").close()
    return [top_out, kids_out]


R["cancel_recursive"] = cancel_case("rec", True)
R["cancel_flat"] = cancel_case("flat", False)


@hpcray.remote(max_restarts=1)
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


def kill_case(no_restart):
    counter = Counter.remote()
    hpcray.get(counter.incr.remote(), timeout=60)
    hpcray.kill(counter, no_restart=no_restart)
    return short(outcome(lambda: hpcray.get(counter.incr.remote(), timeout=60)))


R["kill_no_restart"] = kill_case(True)
R["kill_restart"] = kill_case(False)


@hpcray.remote
def big():
    return np.ones(1 << 20)


def fetch_case():
    local = hpcray.get_runtime_context()._rt.store.objects
    ref = big.remote()
    ready, _ = hpcray.wait([ref], fetch_local=False, timeout=60)
    anywhere = [len(ready), ref.id in local]
    ready, _ = hpcray.wait([ref], fetch_local=True, timeout=60)
    fetched = [len(ready), ref.id in local]
    path = os.path.join(HERE, "fetch")
    pending = gate.remote(path, 1)
    ready, _ = hpcray.wait([pending], fetch_local=False, timeout=0.2)
    before = len(ready)
    open(path, "w").close()
    ready, _ = hpcray.wait([pending], fetch_local=False)
    return [anywhere, fetched, before, len(ready)]


R["wait_fetch_local"] = outcome(fetch_case)


# -- placement groups: names, lifetimes, the current group ------------------------------------
def exists(name):
    try:
        return hpcray.get(get_placement_group(name).ready(), timeout=60)
    except ValueError:
        return False


@hpcray.remote
def current_pg():
    pg = get_current_placement_group()
    return None if pg is None else pg.id


@hpcray.remote
def make_pg(name):
    return placement_group([{"CPU": 0.1}], name=name).id


@hpcray.remote
class Maker:
    def make(self, name, lifetime):
        return placement_group([{"CPU": 0.1}], name=name, lifetime=lifetime).id

    def current(self):
        pg = get_current_placement_group()
        return None if pg is None else pg.id


def named_case():
    pg = placement_group([{"CPU": 1}], name="walk-pg")
    found = get_placement_group("walk-pg")
    twice = outcome(lambda: placement_group([{"CPU": 0.1}], name="walk-pg"))[:2]
    in_pg = PlacementGroupSchedulingStrategy(pg, 0)
    current = [hpcray.get(current_pg.options(scheduling_strategy=in_pg).remote(), timeout=60),
               hpcray.get(current_pg.remote(), timeout=60), get_current_placement_group(),
               hpcray.get(Maker.options(scheduling_strategy=in_pg).remote().current.remote(),
                          timeout=60)]
    remove_placement_group(pg)
    return [found == pg and hpcray.get(found.ready(), timeout=60), twice,
            [c == pg.id if c is not None else None for c in current], exists("walk-pg")]


def lifetime_case():
    from_task = hpcray.get(make_pg.remote("pg-task"), timeout=60)
    maker = Maker.remote()
    hpcray.get([maker.make.remote("pg-actor", None),
                maker.make.remote("pg-detached", "detached")], timeout=60)
    before = [exists(n) for n in ("pg-task", "pg-actor", "pg-detached")]
    hpcray.kill(maker)
    after = [exists(n) for n in ("pg-task", "pg-actor", "pg-detached")]
    return [from_task > 0, before, after]


R["pg_name"] = outcome(named_case)
R["pg_lifetime"] = outcome(lifetime_case)
emit(R)
