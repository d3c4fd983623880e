"""hpcray: Ray's tasks, actors and objects inside an MPI job. No daemons, no ports."""

from . import exceptions, util
from .actor import ActorClass, ActorHandle, get_actor, method
from .api import (
                  available_resources,
                  cancel,
                  cluster_resources,
                  get,
                  get_gpu_ids,
                  get_runtime_context,
                  init,
                  is_initialized,
                  kill,
                  nodes,
                  on_preempt,
                  put,
                  remote,
                  shutdown,
                  timeline,
                  wait,
)
from .object_ref import ObjectRef

ObjectID = ObjectRef  # Ray still exports the old name
from .remote_function import RemoteFunction

__version__ = "0.1.0"

__all__ = [
                  "ActorClass",
                  "ActorHandle",
                  "ObjectID",
                  "ObjectRef",
                  "RemoteFunction",
                  "__version__",
                  "available_resources",
                  "cancel",
                  "cluster_resources",
                  "exceptions",
                  "get",
                  "get_actor",
                  "get_gpu_ids",
                  "get_runtime_context",
                  "init",
                  "is_initialized",
                  "kill",
                  "method",
                  "nodes",
                  "on_preempt",
                  "put",
                  "remote",
                  "shutdown",
                  "timeline",
                  "util",
                  "wait",
]

_LIBRARIES = ("collective", "data", "rllib", "serve", "train", "tune")


def __getattr__(name: str):
    """``hpcray.data`` and the other libraries without importing them first, as ``ray.data``."""
    if name in _LIBRARIES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
