"""``python -m hpcray.serve module:app``: serves an application until SIGINT or SIGTERM.

Run it on every rank of a job (``mpiexec -n N python -m hpcray.serve ...``, ``srun ...``);
``hpcray serve -n N module:app`` starts such a job.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading


def parser() -> argparse.ArgumentParser:
    from hpcray.cli import add_serve_options

    p = argparse.ArgumentParser(prog="hpcray serve",
                                description="Serve an application (module:attribute) over HTTP.")
    add_serve_options(p)
    return p


def load(target: str):
    from hpcray.serve import Application, Deployment

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"hpcray serve: error: expected module:attribute, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"hpcray serve: error: cannot import {module_name!r} (from "
                         f"{os.getcwd()}): {exc}") from None
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"hpcray serve: error: module {module_name!r} has no "
                         f"attribute {attr!r}") from None
    if isinstance(app, Deployment):
        app = app.bind()
    if not isinstance(app, Application):
        raise SystemExit(f"hpcray serve: error: {target} is a {type(app).__name__}, not an "
                         "Application; assign app = MyDeployment.bind(...) in the module")
    return app


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    import hpcray
    from hpcray import serve

    hpcray.init()  # worker ranks serve here and never return
    app = load(ns.target)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    serve.run(app, name=ns.name, route_prefix=ns.route_prefix, host=ns.host, port=ns.port,
              max_body_bytes=ns.max_body_bytes, require_token=ns.require_token,
              debug_errors=ns.debug_errors)
    where = serve.status().http_address
    print(f"hpcray serve: application {ns.name!r} ready at {where}{ns.route_prefix}",
          flush=True)
    print(serve.status(), flush=True)
    stop.wait()
    print("hpcray serve: shutting down", flush=True)
    serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
