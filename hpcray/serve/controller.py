"""The serve controller: runs on the driver, keeps each deployment's replicas as asked."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import hpcray

from . import handle as handles
from .autoscaling import AutoscalingPolicy
from .config import DeploymentConfig
from .deployment import Application
from .ingress import asgi_app_of
from .replica import Replica

STARTING, RUNNING, STOPPING = "STARTING", "RUNNING", "STOPPING"
HEALTHY, UPDATING, DEPLOY_FAILED = "HEALTHY", "UPDATING", "DEPLOY_FAILED"
MAX_START_FAILURES = 3
# Replica-set versions grow across controllers: handles on worker ranks outlive a
# serve.shutdown() and must take the sets of the next controller, not ignore them as old.
_VERSIONS = itertools.count(1)


@dataclass
class ReplicaInfo:
    rid: str
    actor: Any
    state: str = STARTING
    ready: Any = None            # future of the first call, done once __init__ has run
    health: Any = None           # future of the health check in flight
    health_sent: float = 0.0
    stats: Any = None            # future of the stats call in flight
    ongoing: int = 0
    where: str = ""
    drain: Any = None


@dataclass
class DeploymentState:
    app: str
    name: str
    target: Any
    config: DeploymentConfig
    args: tuple
    kwargs: dict
    replicas: dict = field(default_factory=dict)
    want: int = 1
    status: str = UPDATING
    message: str = ""
    failures: int = 0
    policy: AutoscalingPolicy | None = None
    next_stats: float = 0.0
    ids: Any = field(default_factory=lambda: itertools.count(1))

    def count(self, *states: str) -> int:
        return sum(1 for r in self.replicas.values() if r.state in states)


@dataclass
class AppState:
    name: str
    route_prefix: str | None
    ingress: str
    deployments: dict


class Controller:
    """Starts, checks, replaces and scales replicas; publishes replica sets to handles."""

    def __init__(self, tick_s: float = 0.05):
        self.lock = threading.RLock()
        self.apps: dict[str, AppState] = {}
        self.route_table: dict[str, tuple[str, str]] = {}
        self.versions = _VERSIONS
        self.tick_s = tick_s
        self.stopping = threading.Event()
        self.died: list[tuple[str, str, str]] = []
        self.last_tick = time.monotonic()
        handles.replica_died_hook.append(self._replica_died)
        self.thread = threading.Thread(target=self._loop, daemon=True, name="hpcray-serve")
        self.thread.start()

    # -- deploying ----------------------------------------------------------------------------
    def deploy(self, name: str, app: Application, route_prefix: str | None) -> AppState:
        graph = _collect(app)
        with self.lock:
            if name in self.apps:
                self.delete(name)
            states = {}
            for dep_name, bound in graph.items():
                d = bound.deployment
                args = _replace_apps(bound.args, graph, name)
                kwargs = _replace_apps(bound.kwargs, graph, name)
                state = DeploymentState(name, dep_name, d.target, d.config, args, kwargs,
                                        want=d.config.initial_replicas)
                if d.config.autoscaling_config is not None:
                    state.policy = AutoscalingPolicy(d.config.autoscaling_config)
                states[dep_name] = state
            _check_capacity(states)
            app_state = self.apps[name] = AppState(name, route_prefix, app.deployment.name, states)
            self._update_routes()
            try:
                for state in states.values():
                    self._publish(state)
                    self._reconcile(state, time.monotonic())
            except Exception:  # e.g. replicas asking for GPUs the job does not have
                self.delete(name)
                raise
            return app_state

    def wait_running(self, name: str, timeout_s: float) -> None:
        """Returns once every deployment of the app is HEALTHY; raises if one failed."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                app = self.apps.get(name)
                if app is None:
                    raise RuntimeError(f"application {name!r} was deleted while deploying")
                failed = [s for s in app.deployments.values() if s.status == DEPLOY_FAILED]
                if failed:
                    raise RuntimeError("; ".join(f"deployment {s.name} failed: {s.message}"
                                                 for s in failed))
                if all(s.status == HEALTHY for s in app.deployments.values()):
                    return
                pending = [f"{s.name}: {s.count(RUNNING)}/{s.want} running"
                           for s in app.deployments.values() if s.status != HEALTHY]
            if time.monotonic() > deadline:
                raise TimeoutError(f"application {name!r} not running after {timeout_s} s "
                                   f"({', '.join(pending)}); are there enough free ranks? "
                                   "See serve.status()")
            time.sleep(0.02)

    def delete(self, name: str) -> None:
        with self.lock:
            app = self.apps.pop(name, None)
            self._update_routes()
        if app is None:
            return
        for state in app.deployments.values():
            state.want = 0
            self._publish(state, unavailable=f"application {name!r} was deleted")
            for info in list(state.replicas.values()):
                self._stop(state, info, graceful=False)
        handles.forget(name)

    def shutdown(self) -> None:
        for name in list(self.apps):
            self.delete(name)
        self.stopping.set()
        if self._replica_died in handles.replica_died_hook:
            handles.replica_died_hook.remove(self._replica_died)
        self.thread.join(timeout=5)

    # -- the loop -----------------------------------------------------------------------------
    def _replica_died(self, app: str, deployment: str, rid: str) -> None:
        self.died.append((app, deployment, rid))

    def _loop(self) -> None:
        while not self.stopping.wait(self.tick_s):
            try:
                now = self.last_tick = time.monotonic()
                with self.lock:
                    self._handle_died()
                    for app in list(self.apps.values()):
                        for state in app.deployments.values():
                            self._reconcile(state, now)
            except Exception:  # noqa: BLE001 - the controller must keep going
                import traceback

                traceback.print_exc(file=sys.stderr)

    def _handle_died(self) -> None:
        """Drops replicas whose calls found them dead; the reconcile starts replacements."""
        while self.died:
            app, dep, rid = self.died.pop()
            state = self.apps[app].deployments.get(dep) if app in self.apps else None
            info = state.replicas.pop(rid, None) if state is not None else None
            if info is not None:
                print(f"hpcray serve: replica {rid} of {dep} ({info.where}) died; replacing it",
                      file=sys.stderr)
                _kill(info.actor)
                self._publish(state)

    def _reconcile(self, state: DeploymentState, now: float) -> None:
        changed = False
        for info in list(state.replicas.values()):
            if info.state == STARTING and info.ready is not None and info.ready.done():
                exc = info.ready.exception()
                if exc is None:
                    info.state, info.health_sent, changed = RUNNING, now, True
                    info.where = info.ready.result() or ""
                    state.failures = 0
                else:
                    state.replicas.pop(info.rid)
                    state.failures += 1
                    state.message = f"replica failed to start: {_describe(exc)}"
                    print(f"hpcray serve: {state.name}: {state.message}", file=sys.stderr)
            elif info.state == RUNNING:
                changed |= self._check_health(state, info, now)
            elif info.state == STOPPING and (info.drain is None or info.drain.done()):
                state.replicas.pop(info.rid, None)
                _kill(info.actor)
        if state.policy is not None:
            self._autoscale(state, now)
        running, starting = state.count(RUNNING), state.count(STARTING)
        if state.failures >= MAX_START_FAILURES and running == 0:
            if state.status != DEPLOY_FAILED:
                state.status = DEPLOY_FAILED
                self._publish(state, unavailable=f"deployment {state.name} failed: "
                                                 f"{state.message}")
            return
        if running + starting < state.want:
            for _ in range(state.want - running - starting):
                self._start(state)
        elif running + starting > state.want:
            extra = running + starting - state.want
            victims = sorted(state.replicas.values(),
                             key=lambda r: (r.state != STARTING, r.ongoing))
            for info in [v for v in victims if v.state != STOPPING][:extra]:
                changed |= info.state == RUNNING
                self._stop(state, info, graceful=True)
        if changed:
            self._publish(state)
        healthy = state.count(RUNNING) >= state.want and not state.count(STARTING)
        state.status = HEALTHY if healthy else UPDATING
        if healthy:
            state.message = ""

    def _check_health(self, state: DeploymentState, info: ReplicaInfo, now: float) -> bool:
        cfg = state.config
        if info.health is not None:
            if info.health.done():
                exc = info.health.exception()
                info.health = None
                if exc is not None:
                    return self._replace(state, info, f"health check failed: {_describe(exc)}")
            elif now - info.health_sent > cfg.health_check_timeout_s:
                return self._replace(state, info, f"no health check answer within "
                                                  f"{cfg.health_check_timeout_s} s")
        elif now - info.health_sent >= cfg.health_check_period_s:
            info.health_sent = now
            try:
                info.health = info.actor.check_health.remote().future()
            except Exception as exc:  # noqa: BLE001 - the rank is gone
                return self._replace(state, info, _describe(exc))
        return False

    def _replace(self, state: DeploymentState, info: ReplicaInfo, why: str) -> bool:
        print(f"hpcray serve: replica {info.rid} of {state.name} ({info.where}) is unhealthy "
              f"({why}); replacing it", file=sys.stderr)
        self._stop(state, info, graceful=True)  # out of routing now, killed once drained
        return True

    def _autoscale(self, state: DeploymentState, now: float) -> None:
        running = [r for r in state.replicas.values() if r.state == RUNNING]
        for info in running:
            if info.stats is not None and info.stats.done():
                if info.stats.exception() is None:
                    info.ongoing = info.stats.result()["ongoing"]
                info.stats = None
        if now < state.next_stats:
            return
        state.next_stats = now + state.policy.config.metrics_interval_s
        for info in running:
            if info.stats is None:
                info.stats = info.actor.stats.remote().future()
        _, queued = handles.state_for(state.app, state.name).load()
        total = sum(r.ongoing for r in running) + queued
        current = max(state.want, 0)
        state.want = state.policy.decide(current, total, now)
        if state.want != current:
            print(f"hpcray serve: autoscaling {state.name} from {current} to {state.want} "
                  f"replicas ({total} requests ongoing)", file=sys.stderr)

    # -- replicas -----------------------------------------------------------------------------
    def _start(self, state: DeploymentState) -> None:
        rid = f"{next(state.ids)}"
        opts = dict(state.config.ray_actor_options)
        opts.setdefault("num_cpus", 1)
        actor_cls = hpcray.remote(Replica).options(
            max_concurrency=state.config.replica_concurrency,
            name=f"SERVE_REPLICA::{state.app}#{state.name}#{rid}-{time.monotonic_ns()}", **opts)
        actor = actor_cls.remote(state.app, state.name, rid, state.target, state.args,
                                 state.kwargs, state.config.user_config, asgi_app_of(state.target))
        info = ReplicaInfo(rid, actor)
        info.ready = actor.where_am_i.remote().future()
        state.replicas[rid] = info

    def _stop(self, state: DeploymentState, info: ReplicaInfo, graceful: bool) -> None:
        was_running, info.state = info.state == RUNNING, STOPPING
        if was_running:
            self._publish(state)  # no new request reaches it from here on
        if graceful:
            with contextlib.suppress(Exception):  # a replica already gone is killed below
                info.drain = info.actor.drain.remote(
                    state.config.graceful_shutdown_timeout_s).future()
                return
        state.replicas.pop(info.rid, None)
        _kill(info.actor)

    def _publish(self, state: DeploymentState, unavailable: str | None = None) -> None:
        """Tells every handle of this process, and the app's replicas, the running set."""
        running = {r.rid: r.actor for r in state.replicas.values() if r.state == RUNNING}
        snapshot = (state.app, state.name, next(self.versions), running,
                    state.config.max_ongoing_requests, state.config.max_queued_requests,
                    unavailable)
        handles.apply_snapshot(snapshot)
        app = self.apps.get(state.app)
        if app is None or len(app.deployments) < 2:
            return
        for other in app.deployments.values():
            for info in other.replicas.values():
                if info.state != STOPPING:
                    with contextlib.suppress(Exception):  # a dead one is found by its checks
                        info.actor.update_handles.remote([snapshot])

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict:
        with self.lock:
            out = {}
            for app in self.apps.values():
                deps = {}
                for s in app.deployments.values():
                    states: dict[str, int] = {}
                    for r in s.replicas.values():
                        states[r.state] = states.get(r.state, 0) + 1
                    ongoing, queued = handles.state_for(app.name, s.name).load()
                    deps[s.name] = {"status": s.status, "message": s.message,
                                    "replica_states": states, "target": s.want,
                                    "ongoing": ongoing, "queued": queued,
                                    "where": sorted(r.where for r in s.replicas.values()
                                                    if r.state == RUNNING)}
                statuses = {d["status"] for d in deps.values()}
                overall = ("DEPLOY_FAILED" if DEPLOY_FAILED in statuses else
                           "RUNNING" if statuses == {HEALTHY} else "DEPLOYING")
                out[app.name] = {"status": overall, "route_prefix": app.route_prefix,
                                 "ingress": app.ingress, "deployments": deps}
            return out

    def routes(self) -> dict[str, tuple[str, str]]:
        """route prefix -> (app, ingress deployment); a new dict whenever apps change."""
        return self.route_table

    def _update_routes(self) -> None:
        self.route_table = {a.route_prefix: (a.name, a.ingress) for a in self.apps.values()
                            if a.route_prefix is not None}


class _Echo:
    """A CPU-less actor on a worker rank that /-/healthz calls to see the head make progress."""

    def ping(self) -> bool:
        return True


class HeadProbe:
    """Whether the head still makes progress: the controller's loop runs, and a call to a
    worker rank and back (through the head's progress loop) completes within timeout_s.
    Concurrent checks share one call in flight; a pass holds for ``fresh_s``."""

    def __init__(self, controller: Controller, timeout_s: float = 5.0, fresh_s: float = 0.5):
        self.controller = controller
        self.timeout_s = timeout_s
        self.fresh_s = fresh_s
        self.actor: Any = None
        self.pending: Any = None        # concurrent future of the ping in flight
        self.passed = -math.inf

    async def __call__(self) -> str | None:
        """None when healthy, else why not."""
        c = self.controller
        if not c.thread.is_alive():
            return "the serve controller's thread ended"
        stalled = time.monotonic() - c.last_tick
        if stalled > self.timeout_s:
            return f"the serve controller has not run for {stalled:.0f} s"
        if time.monotonic() - self.passed < self.fresh_s:
            return None
        for attempt in range(2):
            try:
                if self.pending is None or self.pending.done():
                    if self.actor is None:
                        self.actor = hpcray.remote(_Echo).options(num_cpus=0).remote()
                    self.pending = self.actor.ping.remote().future()
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self.pending)),
                                       self.timeout_s)
            except asyncio.TimeoutError:
                return (f"the head did not complete a call to a worker rank and back within "
                        f"{self.timeout_s} s")
            except Exception as exc:  # noqa: BLE001 - the probe's rank died: a new probe
                self.actor = self.pending = None
                if attempt:
                    return f"no call to a worker rank succeeds: {_describe(exc)}"
                continue
            self.passed = time.monotonic()
            return None
        return None

    def close(self) -> None:
        if self.actor is not None:
            _kill(self.actor)
            self.actor = None


def _collect(app: Application) -> dict[str, Application]:
    """Every bound deployment reachable from app, by unique name (ingress first)."""
    found: dict[str, Application] = {}
    seen: dict[int, str] = {}

    def visit(node: Application) -> None:
        if id(node) in seen:
            return
        name = node.deployment.name
        base, n = name, 1
        while name in found:
            n += 1
            name = f"{base}_{n}"
        seen[id(node)] = name
        found[name] = node
        for value in _walk((node.args, node.kwargs)):
            visit(value)

    if not isinstance(app, Application):
        raise TypeError(f"serve.run expects an Application (a deployment's .bind(...)), got "
                        f"{type(app).__name__}; did you forget .bind()?")
    visit(app)
    for name, node in found.items():
        node._serve_name = name
    return found


def _walk(value: Any):
    if isinstance(value, Application):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)


def _replace_apps(value: Any, graph: dict, app_name: str) -> Any:
    if isinstance(value, Application):
        return handles.DeploymentHandle(value._serve_name, app_name)
    if isinstance(value, tuple):
        return tuple(_replace_apps(v, graph, app_name) for v in value)
    if isinstance(value, list):
        return [_replace_apps(v, graph, app_name) for v in value]
    if isinstance(value, dict):
        return {k: _replace_apps(v, graph, app_name) for k, v in value.items()}
    return value


def _check_capacity(states: dict) -> None:
    need = sum(s.want * s.config.ray_actor_options.get("num_cpus", 1) for s in states.values())
    free = hpcray.available_resources().get("CPU", 0)
    if need > free + 1e-9:
        raise ValueError(
            f"the application needs {need:g} CPU(s) for its replicas but only {free:g} are free "
            "on the worker ranks; start the job with more ranks (each worker rank has its CPUs), "
            "use fewer replicas, or give replicas ray_actor_options={'num_cpus': 0.5}")


def _kill(actor: Any) -> None:
    with contextlib.suppress(Exception):  # already dead
        hpcray.kill(actor)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"
