"""``@serve.ingress(app)``: a deployment class answers HTTP through an ASGI app."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any


def ingress(app: Any) -> Callable[[type], type]:
    """Serves HTTP through ``app`` (FastAPI, or any ASGI app); routes may be methods."""
    if not callable(app):
        raise TypeError(f"serve.ingress expects an ASGI app such as FastAPI(), got "
                        f"{type(app).__name__}")

    def wrap(cls: type) -> type:
        if not isinstance(cls, type):
            raise TypeError("@serve.ingress decorates a class (put @serve.deployment above it)")
        cls.__serve_asgi_app__ = app
        return cls

    return wrap


def asgi_app_of(target: Any) -> Any:
    return getattr(target, "__serve_asgi_app__", None) if isinstance(target, type) else None


def bind_routes(app: Any, instance: Any) -> Any:
    """A copy of a FastAPI app whose routes defined on the class call this instance."""
    if instance is None:
        return app
    try:
        from fastapi import FastAPI
        from fastapi.routing import APIRoute
    except ImportError:
        return app
    if not isinstance(app, FastAPI):
        return app
    cls = type(instance)
    app = copy.copy(app)
    router = app.router = copy.copy(app.router)
    if getattr(router, "middleware_stack", None) is not None:
        router.middleware_stack = router.app  # it was bound to the original router
    routes = router.routes = list(router.routes)
    for i, route in enumerate(routes):
        if not isinstance(route, APIRoute):
            continue
        name = getattr(route.endpoint, "__name__", "")
        if cls.__dict__.get(name) is not route.endpoint and \
                getattr(cls, name, None) is not route.endpoint:
            continue
        routes[i] = APIRoute(
            route.path, getattr(instance, name), methods=route.methods, name=route.name,
            response_model=route.response_model, status_code=route.status_code,
            response_class=route.response_class, dependencies=route.dependencies,
            tags=route.tags, summary=route.summary, description=route.description,
            include_in_schema=route.include_in_schema)
    app.middleware_stack = None
    return app
