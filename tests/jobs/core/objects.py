"""The objects job of tests/test_core.py."""


from jobkit import digest, emit, make_arrays, regenerate_array

import hpcray
from hpcray.util import PlacementGroupSchedulingStrategy, placement_group, remove_placement_group

hpcray.init()
R = {}
arrays = make_arrays()


@hpcray.remote
def describe(a):
    return digest(a) + [int(a.sum()) if a.dtype.kind == "i" else float(a.sum())]


@hpcray.remote
def rank():
    return hpcray.get_runtime_context().get_rank()


@hpcray.remote
def regenerate(seed, n):
    return regenerate_array(seed, n)


refs = {k: hpcray.put(v) for k, v in arrays.items()}
R["local"] = {k: digest(hpcray.get(r)) for k, r in refs.items()}
R["via_ref"] = dict(zip(refs, hpcray.get([describe.remote(r) for r in refs.values()])))
R["via_value"] = dict(zip(arrays, hpcray.get([describe.remote(v) for v in arrays.values()])))
R["returned"] = digest(hpcray.get(regenerate.remote(7, 50 * 2**20 // 4)))
R["small_values"] = hpcray.get([hpcray.put(v) for v in (42, "text", [1, 2.5, None],
                                                        {"k": (1, 2)}, None)])

# the object does not change with the array it was made from (put, or a big argument)
src = arrays["big"].copy()
r_src = hpcray.put(src)
arg_ref = describe.remote(src)
src[:] = 0
R["copy_semantics"] = [digest(hpcray.get(r_src)), hpcray.get(arg_ref)]

# dicts holding arrays
nested = {"a": arrays["small"], "b": [arrays["mib"], "text"], "c": {"big": arrays["big"]}}
nref = hpcray.put(nested)


@hpcray.remote
def describe_nested(d):
    return [digest(d["a"]), digest(d["b"][0]), d["b"][1], digest(d["c"]["big"])]


back = hpcray.get(nref)
R["nested_local"] = [digest(back["a"]), digest(back["b"][0]), back["b"][1],
                     digest(back["c"]["big"])]
R["nested_task"] = hpcray.get(describe_nested.remote(nref))

# refs inside a put value stay refs and keep their objects alive
inner = hpcray.put(arrays["mib"])
holder = hpcray.put({"ref": inner, "refs": [inner, hpcray.put("second")]})
del inner


@hpcray.remote
def unwrap(d):
    return [type(d["ref"]).__name__, digest(hpcray.get(d["ref"])), hpcray.get(d["refs"][1])]


R["ref_in_put_task"] = hpcray.get(unwrap.remote(holder))
h = hpcray.get(holder)
R["ref_in_put_local"] = [type(h["ref"]).__name__, digest(hpcray.get(h["ref"])),
                         hpcray.get(h["refs"][1])]
del h, holder


# an actor holding a ref it got inside a list keeps the object alive after the driver drops it
@hpcray.remote
class Keeper:
    def keep(self, box):
        self.box = box
        return len(box)

    def read(self):
        return digest(hpcray.get(self.box[0]))


keeper = Keeper.remote()
kept = hpcray.put(arrays["mib"] * 2)
hpcray.get(keeper.keep.remote([kept]))
del kept
# Ordering, not waiting, makes this a real check: the drop reaches the head with the next call,
# and any FREE it causes is sent to the keeper's rank before the call after that.
hpcray.get(keeper.read.remote(), timeout=30)
R["kept_by_actor"] = hpcray.get(keeper.read.remote(), timeout=30)

# worker -> worker: produced on one rank, consumed on the other (two one-CPU bundles)
pg = placement_group([{"CPU": 1}, {"CPU": 1}])
hpcray.get(pg.ready(), timeout=30)
on = [PlacementGroupSchedulingStrategy(pg, i) for i in (0, 1)]
produced = regenerate.options(scheduling_strategy=on[0]).remote(11, 50 * 2**20 // 4)
R["w2w"] = [hpcray.get(rank.options(scheduling_strategy=on[0]).remote()),
            hpcray.get(rank.options(scheduling_strategy=on[1]).remote()),
            hpcray.get(describe.options(scheduling_strategy=on[1]).remote(produced)),
            hpcray.get(describe.options(scheduling_strategy=on[0]).remote(produced)),
            digest(hpcray.get(produced))]
remove_placement_group(pg)
emit(R)
