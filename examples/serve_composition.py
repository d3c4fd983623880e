"""Two deployments composed: a preprocessing step, then a model, behind one HTTP route.

    python examples/serve_composition.py
    hpcray serve -n 4 examples.serve_composition:app

POST / with {"values": [...]} → Preprocess standardizes them with statistics fixed at start,
Model scores them; the ingress calls both through DeploymentHandles, each on its own ranks.
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np

from hpcray import serve
from hpcray.serve import DeploymentHandle


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.5})
class Preprocess:
    def __init__(self, mean: float, std: float) -> None:
        self.mean, self.std = mean, std

    def __call__(self, values: list[float]) -> list[float]:
        return ((np.asarray(values) - self.mean) / self.std).tolist()


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Model:
    def __init__(self, weight: float, bias: float) -> None:
        self.weight, self.bias = weight, bias

    def score(self, features: list[float]) -> float:
        return float(np.tanh(self.weight * np.mean(features) + self.bias))


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Pipeline:
    def __init__(self, preprocess: DeploymentHandle, model: DeploymentHandle) -> None:
        self.preprocess, self.model = preprocess, model

    async def __call__(self, request) -> dict:
        values = (await request.json())["values"]
        features = await self.preprocess.remote(values)
        score = await self.model.score.remote(features)
        return {"score": score, "features": features}


app = Pipeline.bind(Preprocess.bind(10.0, 2.0), Model.bind(1.5, -0.2))


def main() -> None:
    serve.run(app, port=0)
    url = serve.status().http_address + "/"
    for values in ([10, 12, 14], [4, 6, 8]):
        req = urllib.request.Request(url, data=json.dumps({"values": values}).encode(),
                                     headers={"Authorization": f"Bearer {serve.http_token()}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            print(values, "->", json.loads(r.read()))
    print(serve.status())
    serve.shutdown()


if __name__ == "__main__":
    main()
