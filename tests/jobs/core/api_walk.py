"""cancel(recursive=), kill(no_restart=), wait(fetch_local=) at work (issue 19)."""

import os

import numpy as np
from jobkit import emit, gate, outcome, poll

import hpcray

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
    open(os.path.join(HERE, key), "w").close()  # releases what was not cancelled
    return [top_out, [short(outcome(lambda k=k: hpcray.get(k, timeout=60))) for k in kids]]


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
emit(R)
