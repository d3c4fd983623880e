"""``@serve.deployment``, Deployment and Application (a deployment bound to its arguments)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .config import DeploymentConfig


class Application:
    """A deployment with its constructor arguments; other Applications among them are
    replaced by handles to those deployments when replicas start."""

    def __init__(self, deployment: Deployment, args: tuple, kwargs: dict):
        self.deployment = deployment
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"Application({self.deployment.name})"


class Deployment:
    """A class or function with its serving options; ``.bind(...)`` makes an Application."""

    def __init__(self, target: Callable, name: str, config: DeploymentConfig,
                 route_prefix: str | None = None):
        self.target = target
        self.name = name
        self.config = config
        self.route_prefix = route_prefix

    def options(self, *, name: str | None = None, **options) -> Deployment:
        """A copy with options changed (num_replicas, max_ongoing_requests, ...)."""
        return Deployment(self.target, name or self.name, self.config.merged(options),
                          self.route_prefix)

    def bind(self, *args, **kwargs) -> Application:
        if inspect.isfunction(self.target) and (args or kwargs):
            raise TypeError(f"deployment {self.name} is a function: bind() takes no arguments")
        return Application(self, args, kwargs)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"deployment {self.name} cannot be called directly: use "
                        f"serve.run({self.name}.bind(...)) and call the handle it returns")

    def __repr__(self) -> str:
        return f"Deployment({self.name})"


def deployment(_target: Callable | None = None, *, name: str | None = None,
               **options: Any) -> Any:
    """Ray Serve's ``@serve.deployment(num_replicas=..., max_ongoing_requests=..., ...)``."""
    config = DeploymentConfig.from_options(options)

    def wrap(target: Callable) -> Deployment:
        if not (inspect.isclass(target) or inspect.isfunction(target)):
            raise TypeError(f"@serve.deployment decorates a class or a function, got "
                            f"{type(target).__name__}")
        return Deployment(target, name or target.__name__, config)

    return wrap(_target) if _target is not None else wrap
