"""Serve options at work (issue 19): HTTPOptions.root_path and a deployment's
ray_actor_options["runtime_env"]."""

import json
import os
import urllib.error
import urllib.request

from jobkit import emit

import hpcray
from hpcray import serve

hpcray.init()


@serve.deployment(ray_actor_options={"num_cpus": 0.5,
                                     "runtime_env": {"env_vars": {"SERVE_VAR": "set"}}})
class Echo:
    async def __call__(self, request):
        scope = request.scope
        return {"var": os.environ.get("SERVE_VAR"), "path": scope["path"],
                "root_path": scope["root_path"]}


serve.run(Echo.bind(), route_prefix="/app", port=0, require_token=False,
          http_options={"root_path": "/outer"})


def get(path):
    url = f"http://127.0.0.1:{serve.http_port()}{path}"
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return [r.status, json.loads(r.read())]
    except urllib.error.HTTPError as e:
        return [e.code, None]


emit({"stripped": get("/app/x"), "unstripped": get("/outer/app/x")})
serve.shutdown()
