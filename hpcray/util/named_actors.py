"""ray.util.list_named_actors: the live named actors of the job."""

from __future__ import annotations

from .._private.core import context


def list_named_actors(all_namespaces: bool = False) -> list:
    """Names of the live named actors in this session's namespace; with all_namespaces, dicts
    ``{"name": ..., "namespace": ...}`` for every namespace (as Ray)."""
    runtime = context.runtime()
    if all_namespaces:
        return [{"name": name, "namespace": ns}
                for ns, name in runtime.request("named_actors", None)]
    return [name for _, name in runtime.request("named_actors", runtime.config.namespace)]
