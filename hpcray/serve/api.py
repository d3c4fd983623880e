"""serve.run, status, delete, shutdown and handles: Ray Serve's module-level API."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any

import hpcray

from .config import HTTPOptions
from .controller import Controller
from .deployment import Application
from .handle import DeploymentHandle

_state: dict[str, Any] = {"controller": None, "http": None, "ingress": None, "options": None,
                          "probe": None, "token_file": None}
_lock = threading.RLock()
DEPLOY_TIMEOUT_S = float(os.environ.get("HPCRAY_SERVE_DEPLOY_TIMEOUT", "300"))


def _controller() -> Controller:
    with _lock:
        if _state["controller"] is None:
            if not hpcray.is_initialized():
                hpcray.init()
            if hpcray.get_runtime_context().get_rank() != 0:
                raise RuntimeError("serve.run and friends run on the driver (rank 0); call them "
                                   "from the driver's code, not from a task or actor")
            _state["controller"] = Controller()
        return _state["controller"]


def start(http_options: HTTPOptions | dict | None = None, **kwargs) -> None:
    """Starts the controller and the HTTP ingress (``serve.run`` does it when needed).

    Every request must send ``Authorization: Bearer <token>``: ``token=`` or
    HPCRAY_SERVE_TOKEN, else one is generated and printed once; it is also written to
    ``<state dir>/serve-token`` (mode 0600). ``require_token=False`` serves loopback without.
    """
    with _lock:
        controller = _controller()
        if _state["http"] is not None:
            given = dict(http_options.__dict__ if isinstance(http_options, HTTPOptions)
                         else http_options or {})
            given.update({k: v for k, v in kwargs.items() if v is not None})
            current = _state["options"]
            differ = sorted(k for k, v in given.items()
                            if getattr(current, k, None) != v and not (k == "port" and v == 0)
                            and not (k == "token" and v is None))
            if differ:
                raise RuntimeError(f"serve is already listening on {current.host}:"
                                   f"{_state['http'].port} ({', '.join(differ)} differ); call "
                                   "serve.shutdown() before starting it with other HTTP options")
            return
        options, generated = _options(http_options, kwargs)
        from .controller import HeadProbe
        from .proxy import HTTPServer, Ingress, address

        token_file = _write_token(options.token) if options.token else None
        probe = HeadProbe(controller)
        ingress = Ingress(options, controller.routes, controller.status, probe)
        try:
            server = HTTPServer(options, ingress)
        except BaseException:
            if token_file is not None:
                with contextlib.suppress(OSError):
                    os.unlink(token_file)
            raise
        _state.update(http=server, ingress=ingress, options=options, probe=probe,
                      token_file=token_file)
        where = address(options, server.port)
        print(f"hpcray serve: listening on {where} (node {_node()}; at most "
              f"{server.max_connections} connections)", file=sys.stderr)
        if generated:
            print(f"hpcray serve: every request must send 'Authorization: Bearer "
                  f"{options.token}' (shown once; also in {token_file}, readable by you only; "
                  "set HPCRAY_SERVE_TOKEN to choose it)", file=sys.stderr)
        elif token_file:
            print(f"hpcray serve: every request must send 'Authorization: Bearer <token>' "
                  f"(the token given; also in {token_file})", file=sys.stderr)
        else:
            print("hpcray serve: require_token=False: any local user can call this ingress",
                  file=sys.stderr)
        if options.loopback:
            print(f"hpcray serve: loopback only; from a login node: ssh -L {server.port}:"
                  f"127.0.0.1:{server.port} {_node()}", file=sys.stderr)


def _options(http_options, kwargs) -> tuple[HTTPOptions, bool]:
    """The options, with the token to require filled in; True when it was generated."""
    if isinstance(http_options, HTTPOptions):
        if kwargs:
            raise TypeError("pass either http_options or keyword options, not both")
        options = http_options
    else:
        merged = {**(http_options or {}), **{k: v for k, v in kwargs.items() if v is not None}}
        known = {f.name for f in fields(HTTPOptions)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise TypeError(f"unknown HTTP option(s) {unknown}; known: {sorted(known)}")
        options = HTTPOptions(**merged)
    generated = False
    if options.token is None and (options.require_token or not options.loopback):
        token = os.environ.get("HPCRAY_SERVE_TOKEN")
        if token is None:
            token, generated = secrets.token_urlsafe(24), True
        options = replace(options, token=token)
    return options, generated


TOKEN_FILE = "serve-token"


def _write_token(token: str) -> str:
    """Writes the token to the job's state directory, readable by this user only."""
    folder = hpcray.get_runtime_context().get_state_dir()
    path = os.path.join(folder, TOKEN_FILE)
    tmp = os.path.join(folder, f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)  # a file planted at path is replaced, never written through
    return path


def http_token() -> str | None:
    """The bearer token the ingress requires (None before it started, or without one)."""
    options = _state["options"]
    return options.token if options is not None else None


def _node() -> str:
    return hpcray.get_runtime_context().get_node_name()


def run(target: Application, *, name: str = "default", route_prefix: str | None = "/",
        host: str | None = None, port: int | None = None, blocking: bool = False,
        http_options: HTTPOptions | dict | None = None, _timeout_s: float | None = None,
        **http_kwargs) -> DeploymentHandle:
    """Deploys an application and waits until it runs; returns the ingress handle."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if route_prefix is not None and (not isinstance(route_prefix, str) or
                                     not route_prefix.startswith("/")):
        raise ValueError(f"route_prefix must start with '/', got {route_prefix!r}")
    controller = _controller()
    for prefix, (other, _) in controller.routes().items():
        if route_prefix is not None and prefix.rstrip("/") == route_prefix.rstrip("/") and \
                other != name:
            raise ValueError(f"route_prefix {route_prefix!r} is already used by application "
                             f"{other!r}; choose another or serve.delete({other!r}) first")
    if route_prefix is not None:
        start(http_options, host=host, port=port, **http_kwargs)
    controller.deploy(name, target, route_prefix)
    try:
        controller.wait_running(name, _timeout_s or DEPLOY_TIMEOUT_S)
    except BaseException:
        controller.delete(name)
        raise
    handle = DeploymentHandle(target._serve_name, name)
    if blocking:
        _block()
    return handle


def _block() -> None:
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        shutdown()


def http_port() -> int | None:
    """The port the ingress listens on (None before it started)."""
    server = _state["http"]
    return server.port if server is not None else None


def delete(name: str, _blocking: bool = True) -> None:
    """Removes an application: its route, and its replicas once they finished."""
    controller = _state["controller"]
    if controller is not None:
        controller.delete(name)


def shutdown() -> None:
    """Removes every application and stops the HTTP ingress."""
    with _lock:
        controller, server = _state["controller"], _state["http"]
        probe, token_file = _state.get("probe"), _state.get("token_file")
        _state.update(controller=None, http=None, ingress=None, options=None, probe=None,
                      token_file=None)
    if server is not None:
        server.stop()
    if probe is not None:
        probe.close()
    if token_file is not None:
        with contextlib.suppress(OSError):
            os.unlink(token_file)
    if controller is not None:
        controller.shutdown()


def get_app_handle(name: str) -> DeploymentHandle:
    controller = _controller()
    app = controller.apps.get(name)
    if app is None:
        raise ValueError(f"no application named {name!r}; running: {sorted(controller.apps)}")
    return DeploymentHandle(app.ingress, name)


def get_deployment_handle(deployment_name: str, app_name: str = "default") -> DeploymentHandle:
    controller = _controller()
    app = controller.apps.get(app_name)
    if app is None or deployment_name not in app.deployments:
        raise ValueError(f"no deployment {deployment_name!r} in application {app_name!r}")
    return DeploymentHandle(deployment_name, app_name)


@dataclass
class DeploymentStatusOverview:
    status: str
    replica_states: dict
    message: str = ""
    target_replicas: int = 0
    ongoing: int = 0
    queued: int = 0
    where: list = field(default_factory=list)


@dataclass
class ApplicationStatusOverview:
    status: str
    route_prefix: str | None
    deployments: dict
    message: str = ""


@dataclass
class ServeStatus:
    applications: dict
    http_address: str | None = None

    def __str__(self) -> str:
        rows = [("APPLICATION", "DEPLOYMENT", "STATUS", "REPLICAS", "ONGOING", "QUEUED",
                 "WHERE")]
        for app_name, app in self.applications.items():
            for dep_name, d in app.deployments.items():
                running = d.replica_states.get("RUNNING", 0)
                rows.append((f"{app_name} ({app.route_prefix or '-'})", dep_name, d.status,
                             f"{running}/{d.target_replicas}", str(d.ongoing), str(d.queued),
                             ", ".join(d.where)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        if self.http_address:
            lines.insert(0, f"HTTP ingress: {self.http_address}")
        return "\n".join(lines)


def status() -> ServeStatus:
    """Applications and deployments with their replica states; ``print()`` shows a table."""
    controller = _state["controller"]
    apps = {}
    for name, info in (controller.status() if controller is not None else {}).items():
        deps = {d: DeploymentStatusOverview(v["status"], v["replica_states"], v["message"],
                                            v["target"], v["ongoing"], v["queued"], v["where"])
                for d, v in info["deployments"].items()}
        apps[name] = ApplicationStatusOverview(info["status"], info["route_prefix"], deps)
    server = _state["http"]
    where = None
    if server is not None:
        from .proxy import address

        where = address(_state["options"], server.port)
    return ServeStatus(apps, where)
