"""A collective group loses a member while the others wait in it (tests/test_collective_death.py).

``rank``: one member's worker rank is SIGKILLed while the other two wait in a (small, cached)
allreduce; that member (max_restarts=1) comes back on the job's spare rank and the group forms
again with it.
``kill``: a member is ended with hpcray.kill() while the others wait in a barrier and in a
broadcast; then members of forming groups are killed (a declared one, and a joined one)
while the others wait in their joins.
``gpu``: a member of a "nccl" group on (fake) device arrays is killed while the others wait in
an allreduce and in a recv from it.
The group's timeout is 600 s: only the member-death path can end these waits within the
test's hard timeout. Afterwards a new group of live actors matches numpy.
"""

import os
import sys

import numpy as np
from jobkit import emit, kill_and_wait, outcome, poll

import hpcray
import hpcray.collective as col

MODE = sys.argv[1]
BACKEND = "nccl" if MODE == "gpu" else "mpi"
HERE = os.getcwd()
WAIT = 600  # the group timeout: far beyond the test's own


@hpcray.remote(num_cpus=1)
class Member:
    def where(self):
        ctx = hpcray.get_runtime_context()
        return [ctx.get_rank(), os.getpid()]

    def join(self, n, rank, name):
        col.init_collective_group(n, rank, BACKEND, group_name=name, timeout_s=WAIT)
        return col.get_rank(name)

    def call(self, what, name, *args):
        """Marks that it is about to call, then runs the collective call."""
        self.calls = getattr(self, "calls", 0) + 1
        open(os.path.join(HERE, f"in-{name}-{what}-{os.getpid()}-{self.calls}"), "w").close()
        return outcome(lambda: self._call(what, name, *args))

    def _call(self, what, name, *args):
        if what == "join":
            return self.join(*args, name)
        if what == "allreduce":
            (x,) = args
            if BACKEND == "nccl":
                import fakegpu

                d = fakegpu.asarray(x)
                col.allreduce(d, name)
                return d.get().tolist()
            x = x.copy()
            col.allreduce(x, name)
            return x.tolist()
        if what == "recv":
            x, src = args
            out = np.zeros_like(x)
            if BACKEND == "nccl":
                import fakegpu

                d = fakegpu.asarray(out)
                col.recv(d, src, name)
                return d.get().tolist()
            col.recv(out, src, name)
            return out.tolist()
        if what == "broadcast":
            (x,) = args
            x = x.copy()
            col.broadcast(x, 2, name)
            return x.tolist()
        if what == "barrier":
            return col.barrier(name)
        raise ValueError(what)

    def path(self, name):
        return col.describe_group(name)

    def destroy(self, name):
        col.destroy_collective_group(name)
        return col.is_group_initialized(name)


def entered(name, what, count):
    """Waits until members were about to call what on group name count times in all."""
    prefix = f"in-{name}-{what}-"
    return poll(lambda: sum(f.startswith(prefix) for f in os.listdir(HERE)) >= count, 60)


def check_new_group(members, name, seed):
    """A new group of live members: an allreduce of random arrays against numpy."""
    n = len(members)
    hpcray.get([m.join.remote(n, r, name) for r, m in enumerate(members)], timeout=60)
    xs = [np.random.default_rng(seed + r).standard_normal(5000) for r in range(n)]
    got = hpcray.get([m.call.remote("allreduce", name, x) for m, x in zip(members, xs)],
                     timeout=60)
    return all(g[0] == "ok" and np.allclose(g[1], sum(xs)) for g in got)


hpcray.init()
R = {}
if BACKEND == "nccl":  # one (fake) GPU per worker rank: the NCCL path
    Member = Member.options(num_gpus=1)
ms = [Member.remote() for _ in range(2)]
# in "rank" mode the job has a spare worker rank, where the third comes back (max_restarts)
ms.append(Member.options(max_restarts=1 if MODE == "rank" else 0).remote())
R["joined"] = hpcray.get([m.join.remote(3, r, "g") for r, m in enumerate(ms)], timeout=60)
R["where"] = hpcray.get([m.where.remote() for m in ms], timeout=60)
x = np.random.default_rng(1).standard_normal(100_000)

if MODE == "rank":
    # a small allreduce seen before runs its round in C (hpcray.collective._fastpath, where
    # built): the survivors wait in that one
    x = np.random.default_rng(2).standard_normal(8)
    warm = hpcray.get([m.call.remote("allreduce", "g", x) for m in ms], timeout=60)
    R["warm"] = all(w[0] == "ok" and np.allclose(w[1], 3 * x) for w in warm)
    refs = [m.call.remote("allreduce", "g", x) for m in ms[:2]]
    entered("g", "allreduce", 3 + 2)
    kill_and_wait(R["where"][2][1])
    R["waited"] = hpcray.get(refs, timeout=120)
    R["later"] = hpcray.get([m.call.remote("allreduce", "g", x) for m in ms[:2]], timeout=60)
    R["destroyed"] = hpcray.get([m.destroy.remote("g") for m in ms[:2]], timeout=60)
    R["new"] = check_new_group(ms, "g", 7)  # with the restarted third
    R["restarted"] = hpcray.get(ms[2].where.remote(), timeout=60)
elif MODE == "gpu":
    refs = [ms[0].call.remote("allreduce", "g", x), ms[1].call.remote("recv", "g", x, 2)]
    entered("g", "allreduce", 1)
    entered("g", "recv", 1)
    hpcray.kill(ms[2])
    R["waited"] = hpcray.get(refs, timeout=120)
    R["destroyed"] = hpcray.get([m.destroy.remote("g") for m in ms[:2]], timeout=60)
    R["new"] = check_new_group([ms[0], ms[1], Member.remote()], "g", 13)
    R["path"] = hpcray.get(ms[0].path.remote("g"), timeout=60)
else:
    refs = [ms[0].call.remote("barrier", "g"), ms[1].call.remote("broadcast", "g", x)]
    entered("g", "barrier", 1)
    entered("g", "broadcast", 1)
    hpcray.kill(ms[2])
    R["waited"] = hpcray.get(refs, timeout=120)
    R["later"] = hpcray.get(ms[0].call.remote("barrier", "g"), timeout=60)
    R["destroyed"] = hpcray.get([m.destroy.remote("g") for m in ms[:2]], timeout=60)
    # a declared group whose third member is killed before it joins
    third = Member.remote()
    col.create_collective_group([ms[0], ms[1], third], 3, [0, 1, 2], group_name="d")
    refs = [m.call.remote("allreduce", "d", x[:10]) for m in ms[:2]]
    entered("d", "allreduce", 2)
    hpcray.kill(third)
    R["declared"] = hpcray.get(refs, timeout=120)
    col.destroy_collective_group("d")
    # a group of 4 (one more than there are worker ranks): a joined member is killed
    third = Member.remote()
    refs = [m.call.remote("join", "j", 4, r) for r, m in enumerate([ms[0], ms[1], third])]
    entered("j", "join", 3)
    hpcray.kill(third)
    R["joined_killed"] = hpcray.get(refs[:2], timeout=120)
    # the killed member's thread (in its rank) polled on in its join: the name forms anew
    R["new"] = check_new_group([ms[0], ms[1], Member.remote()], "j", 11)
    # killed with no_restart=False, a member comes back on its own (the only free) rank,
    # where its broken group of that name is replaced when it joins again
    again = Member.options(max_restarts=1).remote()
    group = [ms[0], ms[1], again]
    hpcray.get([m.join.remote(3, r, "r") for r, m in enumerate(group)], timeout=60)
    before = hpcray.get(again.where.remote(), timeout=60)
    refs = [m.call.remote("allreduce", "r", x[:10]) for m in ms[:2]]
    entered("r", "allreduce", 2)
    hpcray.kill(again, no_restart=False)
    R["restart_waited"] = hpcray.get(refs, timeout=120)
    hpcray.get([m.destroy.remote("r") for m in ms[:2]], timeout=60)
    R["restart_new"] = check_new_group(group, "r", 17)
    R["restart_rank"] = [before[0], hpcray.get(again.where.remote(), timeout=60)[0]]
emit(R)
