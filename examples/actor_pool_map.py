"""Spread work over a fixed set of actors with ActorPool.map, like ray.util.ActorPool.

Run alone:      python examples/actor_pool_map.py   (hpcray.init() starts a local job)
On 3 MPI ranks: hpcray run -n 3 examples/actor_pool_map.py
            or: mpiexec -n 3 python examples/actor_pool_map.py
"""

import os
import socket

import hpcray
from hpcray.util import ActorPool


@hpcray.remote
class Model:
    """Stands in for something costly to set up once per actor (a model, a connection)."""

    def __init__(self, weight: int) -> None:
        self.weight = weight

    def predict(self, x: int) -> int:
        return self.weight * x + 1

    def where(self, _: object) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"


def main() -> None:
    hpcray.init()
    pool = ActorPool([Model.remote(weight=3) for _ in range(4)])

    # map() yields results in input order; map_unordered() as they finish.
    inputs = list(range(20))
    outputs = list(pool.map(lambda actor, x: actor.predict.remote(x), inputs))
    print("inputs: ", inputs)
    print("outputs:", outputs)
    assert outputs == [3 * x + 1 for x in inputs]

    fastest_first = list(pool.map_unordered(lambda actor, x: actor.predict.remote(x), inputs))
    print("unordered results match:", sorted(fastest_first) == outputs)

    # Lower level: submit() and get_next(), one result at a time.
    for x in (100, 200, 300):
        pool.submit(lambda actor, x: actor.predict.remote(x), x)
    while pool.has_next():
        print("next:", pool.get_next())

    workers = sorted(set(pool.map(lambda actor, x: actor.where.remote(x), range(8))))
    print(f"{len(workers)} actor processes served the pool")


if __name__ == "__main__":
    main()
