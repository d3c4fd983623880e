"""A scikit-learn classifier served over HTTP, with requests batched on each replica.

    python examples/serve_batch_model.py                 # serve, query it, print, stop
    python examples/serve_batch_model.py --forever       # keep serving (Ctrl-C stops)
    hpcray serve -n 3 examples.serve_batch_model:app     # the same app through the CLI

Each replica trains a logistic regression on the bundled digits data when it starts, then
answers POST / with {"pixels": [64 numbers]} as {"digit": d, "batch": size of its batch}.
@serve.batch gathers concurrent requests into one predict() call.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hpcray import serve


@serve.deployment(num_replicas=2, max_ongoing_requests=64)
class DigitClassifier:
    def __init__(self) -> None:
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression

        x, y = load_digits(return_X_y=True)
        self.model = LogisticRegression(max_iter=2000).fit(x[:1500], y[:1500])

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def predict(self, rows: list[list[float]]) -> list[dict]:
        digits = self.model.predict(np.asarray(rows))
        return [{"digit": int(d), "batch": len(rows)} for d in digits]

    async def __call__(self, request) -> dict:
        body = await request.json()
        return await self.predict(body["pixels"])


app = DigitClassifier.bind()


def query(url: str, n: int) -> tuple[float, list[int], float]:
    """Sends n held-out digits concurrently; (accuracy, batch sizes seen, seconds)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = x[1500:1500 + n], y[1500:1500 + n]

    def one(row):
        req = urllib.request.Request(url, data=json.dumps({"pixels": row.tolist()}).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {serve.http_token()}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    start = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, x))
    seconds = time.perf_counter() - start
    accuracy = float(np.mean([a["digit"] == t for a, t in zip(answers, y)]))
    return accuracy, sorted({a["batch"] for a in answers}), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forever", action="store_true", help="keep serving until Ctrl-C")
    parser.add_argument("--requests", type=int, default=297)
    ns = parser.parse_args()
    serve.run(app, port=0 if not ns.forever else 8000, blocking=ns.forever)
    url = serve.status().http_address + "/"
    accuracy, batches, seconds = query(url, ns.requests)
    print(f"{ns.requests} requests in {seconds:.2f} s: accuracy {accuracy:.3f}, "
          f"batch sizes seen {batches}")
    print(serve.status())
    serve.shutdown()


if __name__ == "__main__":
    main()
