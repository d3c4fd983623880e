"""A Serve job that an outside client probes: writes info.json (port, token file), serves
until the file ``stop`` appears in its working directory (at most 240 s), then reports whether
the application and /-/healthz are still fine and exits."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

import hpcray
from hpcray import serve

hpcray.init()
require_token = "--no-token" not in sys.argv


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5})
def echo(request) -> dict:
    return {"path": request.url.path}


serve.run(echo.bind(), name="echo", route_prefix="/echo", port=0,
          **({} if require_token else {"require_token": False}))
state_dir = hpcray.get_runtime_context().get_state_dir()
info = {"port": serve.http_port(), "pid": os.getpid(),
        "token_file": os.path.join(state_dir, "serve-token") if require_token else None}
with open("info.json.tmp", "w") as f:
    json.dump(info, f)
os.replace("info.json.tmp", "info.json")
deadline = time.monotonic() + 240
while not os.path.exists("stop") and time.monotonic() < deadline:
    time.sleep(0.1)

headers = {"Authorization": f"Bearer {serve.http_token()}"} if require_token else {}
url = f"http://127.0.0.1:{serve.http_port()}/-/healthz"
try:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
        health = r.status
except urllib.error.HTTPError as exc:
    health = exc.code
status = serve.status().applications["echo"].status
print("HOLD-RESULT " + json.dumps({"health": health, "status": status}), flush=True)
serve.shutdown()
