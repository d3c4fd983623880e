"""Quickstart: remote tasks, an actor, put/get and wait.

Run alone:      python examples/quickstart.py   (hpcray.init() starts a local job)
On 3 MPI ranks: hpcray run -n 3 examples/quickstart.py
            or: mpiexec -n 3 python examples/quickstart.py
"""

import time

import hpcray


@hpcray.remote
def square(x: int) -> int:
    return x * x


@hpcray.remote
def total(values: list[int]) -> int:
    return sum(values)


@hpcray.remote
def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@hpcray.remote
class Counter:
    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int) -> int:
        self.count += n
        return self.count


def main() -> None:
    hpcray.init()

    # Tasks run in parallel on the workers; get() waits for their results.
    refs = [square.remote(i) for i in range(8)]
    print("squares:         ", hpcray.get(refs))

    # An actor keeps state between calls; calls from one caller run in order.
    counter = Counter.remote()
    for i in range(1, 5):
        counter.add.remote(i)
    print("counter:         ", hpcray.get(counter.add.remote(0)))

    # put() stores a value once; pass the ref to tasks instead of the value.
    data_ref = hpcray.put(list(range(1000)))
    print("sum of put data: ", hpcray.get(total.remote(data_ref)))

    # wait() returns as soon as num_returns results are ready.
    refs = [sleepy.remote(s) for s in (1.0, 0.1, 0.2)]
    ready, not_ready = hpcray.wait(refs, num_returns=2, timeout=10)
    print("first two ready: ", sorted(hpcray.get(ready)), f"({len(not_ready)} still running)")
    print("all done:        ", hpcray.get(refs))


if __name__ == "__main__":
    main()
