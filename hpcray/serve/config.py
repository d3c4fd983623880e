"""Deployment, autoscaling and HTTP options, checked when given (no MPI here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

DEFAULT_MAX_ONGOING = 5
DEFAULT_MAX_BODY = 10 * 1024 * 1024
DEFAULT_MAX_HEADER = 32 * 1024


def _number(name: str, value: Any, low: float = 0.0, integer: bool = False,
            allow_none: bool = False, strict: bool = False) -> Any:
    if value is None and allow_none:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if value < low or (strict and value == low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class AutoscalingConfig:
    """Ray Serve's autoscaling_config: replicas follow the ongoing requests per replica."""

    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    metrics_interval_s: float = 0.5

    def __post_init__(self):
        _number("autoscaling_config min_replicas", self.min_replicas, 0, integer=True)
        _number("autoscaling_config max_replicas", self.max_replicas, 1, integer=True)
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"autoscaling_config min_replicas ({self.min_replicas}) is above "
                             f"max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None:
            _number("autoscaling_config initial_replicas", self.initial_replicas, 0, integer=True)
            if not self.min_replicas <= self.initial_replicas <= self.max_replicas:
                raise ValueError("autoscaling_config initial_replicas must lie between "
                                 "min_replicas and max_replicas")
        _number("autoscaling_config target_ongoing_requests", self.target_ongoing_requests, 0,
                strict=True)
        _number("autoscaling_config upscale_delay_s", self.upscale_delay_s)
        _number("autoscaling_config downscale_delay_s", self.downscale_delay_s)
        _number("autoscaling_config metrics_interval_s", self.metrics_interval_s, 0, strict=True)

    @classmethod
    def parse(cls, value: AutoscalingConfig | dict | None) -> AutoscalingConfig | None:
        if value is None or isinstance(value, AutoscalingConfig):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"autoscaling_config must be a dict or AutoscalingConfig, got "
                            f"{type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"autoscaling_config has unknown key(s) {unknown}; known: "
                             f"{sorted(known)}")
        return cls(**value)

    @property
    def start_replicas(self) -> int:
        start = self.initial_replicas if self.initial_replicas is not None else self.min_replicas
        return max(start, 1) if self.max_replicas else start


class ReplicaOptions:
    """Stands for a deployment's replicas when their ray_actor_options are checked."""


#: what ray_actor_options may hold: the replica actors' own options
RAY_ACTOR_OPTIONS = ("num_cpus", "num_gpus", "resources", "memory", "runtime_env",
                     "scheduling_strategy")


@dataclass(frozen=True)
class DeploymentConfig:
    """The options of ``@serve.deployment``, validated."""

    num_replicas: int = 1
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING
    max_queued_requests: int | None = None   # None: bounded for HTTP (router.queue_limit)
    autoscaling_config: AutoscalingConfig | None = None
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_timeout_s: float = 20.0
    ray_actor_options: dict = field(default_factory=dict)
    user_config: Any = None

    OPTIONS = ("num_replicas", "max_ongoing_requests", "max_queued_requests",
               "autoscaling_config", "health_check_period_s", "health_check_timeout_s",
               "graceful_shutdown_timeout_s", "ray_actor_options", "user_config")

    def __post_init__(self):
        if self.num_replicas == "auto":
            object.__setattr__(self, "num_replicas", 1)
            if self.autoscaling_config is None:
                object.__setattr__(self, "autoscaling_config",
                                   AutoscalingConfig(min_replicas=1, max_replicas=100))
        _number("num_replicas", self.num_replicas, 0, integer=True)
        _number("max_ongoing_requests", self.max_ongoing_requests, 1, integer=True)
        _number("max_queued_requests", self.max_queued_requests, -1, integer=True,
                allow_none=True)
        _number("health_check_period_s", self.health_check_period_s, 0, strict=True)
        _number("health_check_timeout_s", self.health_check_timeout_s, 0, strict=True)
        _number("graceful_shutdown_timeout_s", self.graceful_shutdown_timeout_s)
        object.__setattr__(self, "autoscaling_config",
                           AutoscalingConfig.parse(self.autoscaling_config))
        if not isinstance(self.ray_actor_options, dict):
            raise TypeError("ray_actor_options must be a dict such as {'num_cpus': 1, "
                            "'num_gpus': 0.5}")
        unknown = sorted(set(self.ray_actor_options) - set(RAY_ACTOR_OPTIONS))
        if unknown:
            raise ValueError(f"ray_actor_options has unsupported key(s) {unknown}; allowed: "
                             f"{sorted(RAY_ACTOR_OPTIONS)}")
        import hpcray

        # checked now, as the replicas' actor options will be (runtime_env: env_vars,
        # working_dir, py_modules), so a deployment that cannot start fails at its definition
        hpcray.remote(**self.ray_actor_options)(ReplicaOptions)

    @classmethod
    def from_options(cls, options: dict) -> DeploymentConfig:
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise TypeError(f"serve.deployment got unknown option(s) {unknown}; known: "
                            f"{list(cls.OPTIONS)}")
        return cls(**options)

    def merged(self, options: dict) -> DeploymentConfig:
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise TypeError(f"Deployment.options got unknown option(s) {unknown}; known: "
                            f"{list(self.OPTIONS)}")
        if "num_replicas" in options and "autoscaling_config" not in options:
            options = {**options, "autoscaling_config": None}
        return replace(self, **options)

    @property
    def initial_replicas(self) -> int:
        if self.autoscaling_config is not None:
            return self.autoscaling_config.start_replicas
        return self.num_replicas

    @property
    def replica_concurrency(self) -> int:
        """Slots of a replica actor: the requests plus room for health checks and stats."""
        return self.max_ongoing_requests + 4


@dataclass(frozen=True)
class HTTPOptions:
    """Where and how the HTTP ingress listens, and what it lets through.

    Every request must send ``Authorization: Bearer <token>`` (``token=``, else
    HPCRAY_SERVE_TOKEN, else one is generated); ``require_token=False`` drops that on
    loopback. ``debug_errors=True`` shows replicas' errors to clients (else a 500 with a
    request id, details in the job's log). ``max_connections`` (None: half the open-file
    limit, at most 1024), ``max_header_bytes``, ``keep_alive_timeout_s`` and
    ``incomplete_request_timeout_s`` bound what clients can hold. ``root_path`` (e.g.
    "/serve"), as in Ray: Serve runs behind a proxy that strips that prefix; requests are routed
    as they come, and applications see it in their ASGI scope's ``path`` and ``root_path``.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    request_timeout_s: float | None = None
    root_path: str = ""
    require_token: bool = True
    debug_errors: bool = False
    max_connections: int | None = None
    max_header_bytes: int = DEFAULT_MAX_HEADER
    keep_alive_timeout_s: float = 5.0
    incomplete_request_timeout_s: float = 10.0

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a host name or address, got {self.host!r}")
        _number("port", self.port, 0, integer=True)
        if self.port > 65535:
            raise ValueError(f"port must be at most 65535, got {self.port}")
        _number("max_body_bytes", self.max_body_bytes, 0, integer=True)
        _number("request_timeout_s", self.request_timeout_s, 0, strict=True, allow_none=True)
        _number("max_connections", self.max_connections, 1, integer=True, allow_none=True)
        _number("max_header_bytes", self.max_header_bytes, 1024, integer=True)
        _number("keep_alive_timeout_s", self.keep_alive_timeout_s, 0, strict=True)
        _number("incomplete_request_timeout_s", self.incomplete_request_timeout_s, 0,
                strict=True)
        for name in ("require_token", "debug_errors"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.root_path, str) or self.root_path and (
                not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ValueError(f"root_path must be '' or a path such as '/serve' (a leading '/', "
                             f"no trailing one), got {self.root_path!r}")
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < 16):
            raise ValueError("token must be a string of at least 16 characters")

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")
