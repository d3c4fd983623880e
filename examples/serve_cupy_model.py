"""A CuPy model on a GPU replica: a random-feature regressor evaluated on the device.

    hpcray run -n 2 examples/serve_cupy_model.py     # needs a GPU and the gpu extra

The replica asks for a GPU (ray_actor_options={"num_gpus": 1}); its weights live on the
device and every request is computed there. Without CuPy or a GPU it says so and exits 0.
"""

from __future__ import annotations

import json
import sys
import urllib.request

import hpcray
from hpcray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0, "num_gpus": 1})
class GpuModel:
    def __init__(self, features: int = 4096) -> None:
        import cupy as cp

        rng = cp.random.default_rng(0)
        self.w = rng.standard_normal((8, features), dtype=cp.float32)
        self.v = rng.standard_normal(features, dtype=cp.float32) / features

    async def __call__(self, request) -> dict:
        import cupy as cp

        x = cp.asarray((await request.json())["x"], dtype=cp.float32)
        y = cp.cos(x @ self.w) @ self.v
        return {"y": float(y), "device": int(cp.cuda.Device().id),
                "gpu_ids": hpcray.get_gpu_ids()}


def main() -> int:
    try:
        import cupy  # noqa: F401
    except ImportError:
        print("serve_cupy_model: CuPy is not installed (pip install hpcray[gpu]); skipped")
        return 0
    hpcray.init()
    if not hpcray.cluster_resources().get("GPU"):
        print("serve_cupy_model: this job has no GPU; skipped")
        return 0
    serve.run(GpuModel.bind(), port=0)
    url = serve.status().http_address + "/"
    req = urllib.request.Request(url, data=json.dumps({"x": [0.1] * 8}).encode(),
                                 headers={"Authorization": f"Bearer {serve.http_token()}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        print(json.loads(r.read()))
    serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
