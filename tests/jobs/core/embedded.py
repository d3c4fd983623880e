"""The embedded job of tests/test_core.py."""

import os

from jobkit import emit, outcome, settle_output

import hpcray

hpcray.init(num_cpus=2)
R = {}


@hpcray.remote
def square(x):
    print(f"embedded-print {x}")
    return [x * x, hpcray.get_runtime_context().get_rank(), os.getpid()]


@hpcray.remote
class Acc:
    def __init__(self):
        self.total = 0

    def add(self, x):
        self.total += x
        return self.total


R["squares"] = hpcray.get([square.remote(i) for i in range(10)])
acc = Acc.remote()
R["acc"] = hpcray.get([acc.add.remote(i) for i in range(10)])
R["cluster"] = hpcray.cluster_resources().get("CPU")
ctx = hpcray.get_runtime_context()
R["driver"] = [ctx.get_rank(), ctx.get_world_size(), os.getpid()]
R["error"] = outcome(lambda: hpcray.get(square.remote("x")))
settle_output()
emit(R)
