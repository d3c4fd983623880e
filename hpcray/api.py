"""The public functions: init, remote, get, put, wait and friends, with Ray's semantics."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

from ._private.core import context, init_options
from ._private.core.timeline import trace_events
from ._private.device.registry import host_copies
from ._private.job import bootstrap, preempt
from ._private.job.preempt import HeadPreemption
from .actor import ActorClass, ActorHandle
from .object_ref import ObjectRef
from .remote_function import RemoteFunction
from .runtime_context import RuntimeContext

# the runtime itself is held in one place for both roles: context.current()
_state: dict[str, Any] = {"spmd_done": False}
_init_lock = threading.RLock()


def init(address: str | None = None, *, num_cpus: int | None = None,
         resources: dict[str, float] | None = None, num_gpus: int | None = None,
         object_store_memory: int | None = None, local_mode: bool = False,
         ignore_reinit_error: bool = False, include_dashboard: bool | None = None,
         dashboard_host: str | None = None, job_config: Any = None,
         configure_logging: bool | None = None, logging_level: Any = None,
         log_to_driver: bool = True, namespace: str | None = None,
         runtime_env: dict | None = None, _temp_dir: str | None = None,
         _system_config: dict | None = None) -> dict:
    """Starts hpcray. Collective: on every rank but 0 it runs the worker and never returns.

    Under mpiexec/srun the job's ranks are used (``num_cpus``, if given, must match them).
    Run plainly (one process), it spawns ``num_cpus`` local worker ranks (default: one per
    core). GPUs are found with NVML; ``num_gpus`` caps how many per node are used (or declares
    GPUs NVML cannot see). ``runtime_env`` (env_vars, working_dir, py_modules) holds for every
    task and actor, under their own; ``object_store_memory`` is the bytes of freed node-store
    segments each process keeps for reuse (HPCRAY_SEGMENT_CACHE). ``address`` may only name
    this job (None, "auto", "local"); Ray's arguments hpcray cannot carry out are refused with
    ValueError.
    """
    if isinstance(address, int):
        raise TypeError(f"init()'s first argument is Ray's address; give the CPUs as "
                        f"init(num_cpus={address})")
    ray_overrides, warnings = init_options.settings(
        address=address, object_store_memory=object_store_memory, local_mode=local_mode,
        include_dashboard=include_dashboard, dashboard_host=dashboard_host,
        job_config=job_config, configure_logging=configure_logging,
        logging_level=logging_level, runtime_env=init_options.runtime_env_of(runtime_env),
        _temp_dir=_temp_dir,
        _system_config=_system_config)
    with _init_lock:
        if context.current() is not None:
            if ignore_reinit_error:
                return _info()
            raise RuntimeError("hpcray.init() was already called; call hpcray.shutdown() first or "
                               "pass ignore_reinit_error=True")
        if _state["spmd_done"]:
            raise RuntimeError("this MPI job's workers already exited after shutdown(); an "
                               "mpiexec/srun job can call init() only once")
        if num_cpus is not None and (not isinstance(num_cpus, int) or num_cpus < 0):
            raise ValueError(f"num_cpus must be an int >= 0 (0: a driver-only session), got "
                             f"{num_cpus!r}")
        if num_gpus is not None and (not isinstance(num_gpus, int) or num_gpus < 0):
            raise ValueError(f"num_gpus must be an int >= 0 (GPUs per node), got {num_gpus!r}")
        if namespace is None and "HPCRAY_NAMESPACE" not in os.environ:
            namespace = str(uuid.uuid4())  # as Ray: an anonymous namespace per session
        overrides = {"log_to_driver": log_to_driver, "num_gpus": num_gpus,
                     "namespace": namespace, "sys_path": list(sys.path), **ray_overrides}
        if resources:
            overrides["resources"] = dict(resources)
        head = bootstrap.start(overrides, num_cpus)
        for text in warnings:
            print(f"hpcray: warning: {text}", file=sys.stderr, flush=True)
        if not _state.get("atexit"):
            _state["atexit"] = True
            bootstrap.exit_hook.install()
            atexit.register(_at_exit)
        HeadPreemption(head, _end_after_preempt).install()
        return _info()


def _end_after_preempt(status: int) -> None:
    """Ends the job from the preemption thread: workers stop, MPI finalizes, rank 0 exits.

    The init lock is held until the process exits, so the driver can neither shut down nor
    start again meanwhile; its calls into the stopping runtime just wait for the exit.
    """
    _init_lock.acquire()
    try:
        head = _head()
        if head is not None:
            bootstrap.head_stop(head)  # with a dead rank this exits with status 1 itself
            bootstrap.head_finalize(head)
        else:  # the driver had finished; finalize unless its exit handler already did
            final = _state.pop("finalize", None)
            if final is not None:
                bootstrap.head_finalize(final)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


def on_preempt(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Registers fn to run on the head when the job is told to stop (SIGTERM, or the warning
    signal Slurm sends with ``--signal``); usable as a decorator.

    Callbacks run in registration order in a thread of rank 0 while the job still serves
    tasks, so they may checkpoint through tasks and actors. Then, if the Slurm job was
    submitted with ``--requeue``, hpcray requeues it (``scontrol requeue``) and the job ends.
    """
    return preempt.register(fn)


def _head():
    """The head runtime when this is the driver's process and hpcray runs, else None."""
    rt = context.current()
    return rt if rt is not None and rt.rank == 0 else None


def _info() -> dict:
    rt = context.current()
    return {"job_id": rt.job_id, "num_ranks": len(rt.ranks), "node_id": rt.ranks[0].node_id}


def _at_exit() -> None:
    if _head() is not None:
        shutdown()
    final = _state.pop("finalize", None)
    if final is not None:
        bootstrap.head_finalize(final)


def shutdown() -> None:
    """Stops every worker rank. In a plain (spawned) run, init() may be called again."""
    with _init_lock:
        head = _head()
        if head is None:
            return
        context.set_current(None)
        _state["finalize"] = head
        if head.mpi_job.spawned is None:
            _state["spmd_done"] = True
        bootstrap.head_stop(head)


def is_initialized() -> bool:
    return context.current() is not None


_runtime = context.runtime


def remote(*args, **options):
    """``@remote`` or ``@remote(num_cpus=..., ...)`` on a function (task) or class (actor)."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("remote() takes a function or class, or only keyword options: "
                        "@hpcray.remote or @hpcray.remote(num_cpus=2)")
    return lambda target: _make_remote(target, options)


def _make_remote(target, options: dict):
    if isinstance(target, type):
        return ActorClass(target, options)
    if callable(target):
        return RemoteFunction(target, options)
    raise TypeError(f"@remote needs a function or a class, got {type(target).__name__}")


def get(object_refs, *, timeout: float | None = None, to_host: bool = False):
    """Blocks until the objects are ready; returns their values (raises a failed task's error).

    CuPy arrays come back on this rank's GPU; ``to_host=True`` returns them as numpy arrays
    (the only way to read them on a rank without a GPU).
    """
    if to_host:
        with host_copies():
            return _runtime().get(object_refs, timeout)
    return _runtime().get(object_refs, timeout)


def put(value: Any) -> ObjectRef:
    """Stores value in this rank's memory; returns a ref usable anywhere in the job."""
    return _runtime().put(value)


def wait(object_refs: list[ObjectRef], *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Returns (ready, not_ready) once num_returns refs are ready or timeout seconds passed."""
    return _runtime().wait(object_refs, num_returns, timeout, fetch_local)


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancels the task producing object_ref: get() then raises TaskCancelledError. With
    ``recursive`` (the default, as in Ray) the tasks and actor calls it submitted, and theirs,
    are cancelled too (``force`` applies to those that are tasks)."""
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef, got {type(object_ref).__name__}")
    _runtime().request("cancel", object_ref.id, force, bool(recursive))


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Ends the actor now; pending and later calls raise ActorDiedError. With
    ``no_restart=False`` an actor created with ``max_restarts`` restarts instead, as in Ray."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() expects an actor handle, got {type(actor).__name__}")
    _runtime().request("kill", actor._actor_id, "it was killed with hpcray.kill()",
                       not no_restart)


def available_resources() -> dict[str, float]:
    """What is free now; resources with nothing free are left out, as Ray does."""
    return {k: v for k, v in _runtime().request("available_resources").items() if v > 0}


def cluster_resources() -> dict[str, float]:
    return _runtime().request("cluster_resources")


def nodes() -> list[dict]:
    """One dict per node: NodeID, NodeName, NodeManagerHostname, Alive, Resources, Ranks."""
    return _runtime().request("nodes")


def timeline(filename: str | None = None) -> list[dict]:
    """Every rank's recent tasks and actor calls as Chrome trace events (as ``ray.timeline``).

    With a filename, also writes them as JSON to open in chrome://tracing or ui.perfetto.dev.
    Each rank keeps its last HPCRAY_TIMELINE_EVENTS events (default 100,000).
    """
    runtime = _runtime()
    if runtime.rank != 0:
        raise RuntimeError("timeline() is called on the driver, not inside a task")
    names = {info.rank: f"rank {info.rank} ({info.node_name}, pid {info.pid})"
             for info in runtime.ranks}
    names[0] = f"rank 0: head + driver ({runtime.ranks[0].node_name})"
    events = trace_events(runtime.collect_events(), names)
    if filename is not None:
        with open(filename, "w") as f:
            json.dump(events, f)
    return events


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(_runtime())


def get_gpu_ids() -> list[str]:
    """GPU ids (as CUDA_VISIBLE_DEVICES named them) of the calling task or actor when it asked
    for GPUs; on the driver, the head rank's GPU. CUDA device 0 is always the first of them."""
    return _runtime().gpu_ids()


context.set_auto_init(init)
