"""An ASHA sweep: softmax regression trained with minibatch SGD in numpy.

    python examples/tune_asha.py              # 1 head + one worker rank per core
    hpcray run -n 9 examples/tune_asha.py     # 8 workers

Learning rate, batch size and momentum are searched; each trial reports its validation
accuracy every epoch and ASHA stops the weak ones early. The dataset is put in the object
store once (tune.with_parameters) and shared by all trials.
"""

from __future__ import annotations

import numpy as np

import hpcray
from hpcray import tune


def make_data(n: int = 4000, d: int = 20, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.5, size=(classes, d))
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(0, 3.0, size=(n, d))
    split = n * 3 // 4
    return {"x": x[:split], "y": y[:split], "xv": x[split:], "yv": y[split:]}


def train(config: dict, data: dict) -> None:
    x, y, xv, yv = data["x"], data["y"], data["xv"], data["yv"]
    rng = np.random.default_rng(config["seed"])
    classes = int(y.max()) + 1
    w = np.zeros((x.shape[1], classes))
    velocity = np.zeros_like(w)
    onehot = np.eye(classes)[y]
    for _epoch in range(30):
        order = rng.permutation(len(x))
        for start in range(0, len(x), config["batch"]):
            idx = order[start:start + config["batch"]]
            logits = x[idx] @ w
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            grad = x[idx].T @ (p - onehot[idx]) / len(idx)
            velocity = config["momentum"] * velocity - config["lr"] * grad
            w += velocity
        accuracy = float(np.mean(np.argmax(xv @ w, axis=1) == yv))
        tune.report({"accuracy": accuracy})


if __name__ == "__main__":
    hpcray.init()
    tuner = tune.Tuner(
        tune.with_parameters(train, data=make_data()),
        param_space={"lr": tune.loguniform(1e-4, 1.0), "batch": tune.choice([16, 64, 256]),
                     "momentum": tune.uniform(0.0, 0.95), "seed": tune.randint(0, 1000)},
        tune_config=tune.TuneConfig(
            metric="accuracy", mode="max", num_samples=48,
            scheduler=tune.ASHAScheduler(max_t=30, grace_period=2, reduction_factor=3)),
        run_config=tune.RunConfig(name="tune_asha_example"))
    results = tuner.fit()
    best = results.get_best_result()
    print(f"best accuracy {best.metrics['accuracy']:.3f} after "
          f"{best.metrics['training_iteration']} epochs with {best.config}")
    print(f"experiment folder: {results.experiment_path}")
