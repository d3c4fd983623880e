"""The tasks job of tests/test_core.py."""

import json
import os
import sys

from jobkit import emit, outcome, poll

import hpcray

hpcray.init()
R = {}


@hpcray.remote
def combine(a, b=2, *rest, c=3, **kw):
    return [a, b, list(rest), c, sorted(kw.items())]


R["args"] = hpcray.get([
    combine.remote(1),
    combine.remote(1, 5),
    combine.remote(1, 5, 6, 7, c=8, z=9, y="w"),
    combine.remote(a=10, c=11),
    combine.remote(*[4, 5, 6], c=None),
])


@hpcray.remote
def poly(x):
    return x * x - 3 * x + 7


xs = json.loads(sys.argv[1])
R["poly"] = hpcray.get([poly.remote(x) for x in xs])
R["chain"] = hpcray.get(poly.remote(poly.remote(poly.remote(2))))
R["kwref"] = hpcray.get(combine.remote(poly.remote(1), c=poly.remote(2)))


@hpcray.remote(num_returns=3)
def three(x):
    return x, [x + 1], {"v": x + 2}


refs = three.remote(10)
R["nr3_kind"] = [type(refs).__name__, len(refs),
                 all(isinstance(r, hpcray.ObjectRef) for r in refs)]
R["nr3"] = hpcray.get(refs)
R["nr3_as_1"] = hpcray.get(three.options(num_returns=1).remote(5))
R["nr3_as_2"] = outcome(lambda: hpcray.get(three.options(num_returns=2).remote(5)))


@hpcray.remote
def touch(path):
    with open(path, "w") as f:
        f.write("ran")


marker = os.path.abspath("nr0-marker")
r0 = touch.options(num_returns=0).remote(marker)
R["nr0"] = [r0 is None, bool(poll(lambda: os.path.exists(marker)))]
one = touch.remote(os.path.abspath("nr1-marker"))
R["nr1"] = [type(one).__name__, hpcray.get(one)]
fire = os.path.abspath("fire-and-forget")
touch.remote(fire)  # the ref is dropped at once; the task still runs
R["fire_and_forget"] = bool(poll(lambda: os.path.exists(fire)))
R["named_task"] = outcome(lambda: hpcray.get(
    three.options(num_returns=1, name="custom-task-name").remote(None)))
R["bad_option"] = outcome(lambda: poly.options(not_an_option=1))
R["bad_num_returns"] = outcome(lambda: poly.options(num_returns=-1))
R["bad_remote"] = outcome(lambda: hpcray.remote(1, 2))


# ObjectRefs: resolved at the top level of the arguments, left alone inside containers
@hpcray.remote
def describe(x, lst, d=None, *, k=None):
    inner = lst[0]
    return [type(x).__name__, type(inner).__name__, hpcray.get(inner), type(d).__name__,
            type(k).__name__, type(lst[1]["r"]).__name__, x]


pref = hpcray.put(41)
R["refargs"] = hpcray.get(describe.remote(pref, [poly.remote(3), {"r": pref}], d=pref, k=pref))


@hpcray.remote
def make_ref(v):
    return hpcray.put(v)


outer = hpcray.get(make_ref.remote([1, 2, 3]))
R["returned_ref"] = [type(outer).__name__, hpcray.get(outer)]
R["same_ref_twice"] = hpcray.get([pref, pref]) + hpcray.get((pref,))


# nested tasks two levels deep: 8 + 24 + 72 tasks on 2 CPUs, all but the leaves blocked in get
@hpcray.remote
def leaf(x):
    return 2 * x


@hpcray.remote
def mid(x):
    return sum(hpcray.get([leaf.remote(10 * x + i) for i in range(3)]))


@hpcray.remote
def top(x):
    return sum(hpcray.get([mid.remote(10 * x + i) for i in range(3)]))


R["nested"] = hpcray.get([top.remote(i) for i in range(8)], timeout=90)
emit(R)
