"""Batch inference with a callable class on a pool of actors (Ray Data's map_batches pattern).

A scikit-learn model is trained once on the driver, then each actor of the pool builds its
predictor once (in __init__) and labels batches of rows read as a Dataset. Rows move from the
reading rank to the actor's rank directly; the driver sees only the small predictions.

Run alone:      python examples/data_batch_inference.py   (hpcray.init() starts a local job)
On 3 MPI ranks: hpcray run -n 3 examples/data_batch_inference.py
"""

from __future__ import annotations

import numpy as np

import hpcray
import hpcray.data


class Predictor:
    """Loads the model once per actor; labels one batch per call."""

    def __init__(self, model_ref: list) -> None:
        self.model = hpcray.get(model_ref[0])  # fetched once per actor, not once per batch

    def __call__(self, batch: dict) -> dict:
        return {"label": batch["label"], "pred": self.model.predict(batch["x"])}


def main() -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    hpcray.init()
    x, y = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=2000).fit(x[:1000], y[:1000])
    model_ref = hpcray.put(model)

    # 80,000 rows: the digits' test part, repeated, as a dataset of 8 blocks
    rows = np.tile(np.arange(1000, len(x)), 100)
    ds = hpcray.data.from_numpy(np.array_split(rows, 8)).map_batches(
        lambda b: {"x": x[b["data"]], "label": y[b["data"]]})
    preds = ds.map_batches(Predictor, fn_constructor_args=([model_ref],), concurrency=2,
                           batch_size=4096)
    correct = preds.map_batches(lambda b: {"ok": (b["pred"] == b["label"]).astype(np.int64)})
    total = correct.count()
    accuracy = correct.sum("ok") / total
    print(f"{total} rows labelled by 2 actors; accuracy {accuracy:.3f}")
    print(correct.stats())
    assert total == len(rows) and accuracy > 0.85
    hpcray.shutdown()


if __name__ == "__main__":
    main()
