"""A chain of actors, producer -> transformer -> sink, connected by ObjectRefs and handles.

Run alone:      python examples/actor_pipeline.py   (hpcray.init() starts a local job)
On 3 MPI ranks: hpcray run -n 3 examples/actor_pipeline.py
            or: mpiexec -n 3 python examples/actor_pipeline.py
"""

import numpy as np

import hpcray


@hpcray.remote
class Producer:
    def produce(self, batch: int) -> np.ndarray:
        return np.arange(batch * 1000, (batch + 1) * 1000, dtype=np.float64)


@hpcray.remote
class Transformer:
    def __init__(self, scale: float) -> None:
        self.scale = scale

    def transform(self, values: np.ndarray) -> np.ndarray:
        # An ObjectRef passed as an argument arrives here as its value.
        return np.sqrt(values) * self.scale


@hpcray.remote
class Sink:
    def __init__(self) -> None:
        self.batches = 0
        self.total = 0.0

    def consume(self, values: np.ndarray) -> int:
        self.batches += 1
        self.total += float(values.sum())
        return self.batches

    def summary(self) -> dict:
        return {"batches": self.batches, "total": round(self.total, 3)}


@hpcray.remote
def report(sink) -> dict:
    """Actor handles can be passed to tasks (and actors) like any other argument."""
    return hpcray.get(sink.summary.remote())


def main() -> None:
    hpcray.init()
    producer, transformer, sink = Producer.remote(), Transformer.remote(0.5), Sink.remote()

    # Each stage gets the previous stage's ObjectRef: data flows between the actors
    # without passing through the driver.
    done = []
    for batch in range(10):
        raw = producer.produce.remote(batch)
        transformed = transformer.transform.remote(raw)
        done.append(sink.consume.remote(transformed))
    print("batches consumed:", hpcray.get(done)[-1])

    expected = float((np.sqrt(np.arange(10_000, dtype=np.float64)) * 0.5).sum())
    summary = hpcray.get(report.remote(sink))
    print("sink summary:    ", summary)
    print("expected total:  ", round(expected, 3))


if __name__ == "__main__":
    main()
