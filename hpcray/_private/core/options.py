"""Validation of ``.options(...)``/``@remote(...)`` keywords, with Ray's names and defaults."""

from __future__ import annotations

import inspect
import math
import os
import types
from typing import Any

from . import py_modules
from .scheduler import DEFAULT, SPREAD, InPlacementGroup, NodeAffinity

COMMON = {"num_cpus", "num_gpus", "resources", "memory", "scheduling_strategy", "placement_group",
          "placement_group_bundle_index", "placement_group_capture_child_tasks", "runtime_env",
          "accelerator_type", "label_selector", "_metadata"}
TASK = COMMON | {"num_returns", "max_retries", "retry_exceptions", "max_calls", "name",
                 "in_rank"}
ACTOR = COMMON | {"name", "namespace", "lifetime", "max_concurrency", "max_restarts",
                  "max_task_retries", "get_if_exists", "max_pending_calls", "concurrency_groups",
                  "in_rank"}
METHOD = {"num_returns", "name", "max_task_retries", "retry_exceptions", "concurrency_group"}


def validate(options: dict[str, Any], allowed: set[str], what: str) -> dict[str, Any]:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"invalid option(s) {unknown} for {what}; valid options are "
                         f"{sorted(allowed)}")
    for key in ("num_cpus", "num_gpus", "memory"):
        value = options.get(key)
        if value is not None and (not isinstance(value, (int, float)) or not 0 <= value < math.inf):
            raise ValueError(f"{key} must be a non-negative number, got {value!r}")
    resources = options.get("resources")
    if resources is not None:
        if not isinstance(resources, dict):
            raise ValueError(f"resources must be a dict, got {type(resources).__name__}")
        for key, value in resources.items():
            if key in ("CPU", "GPU", "memory"):
                raise ValueError(f"use num_cpus/num_gpus/memory instead of resources={{{key!r}: ...}}")
            if not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"resource {key!r} must be a non-negative number, got {value!r}")
    num_returns = options.get("num_returns")
    if num_returns is not None and (not isinstance(num_returns, int) or num_returns < 0):
        raise ValueError(f"num_returns must be a non-negative int, got {num_returns!r}")
    lifetime = options.get("lifetime")
    if lifetime not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be 'detached' or 'non_detached', got {lifetime!r}")
    concurrency = options.get("max_concurrency")
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise ValueError(f"max_concurrency must be an int >= 1, got {concurrency!r}")
    groups = options.get("concurrency_groups")
    if groups is not None and not (isinstance(groups, dict) and all(
            isinstance(k, str) and k and type(v) is int and v >= 1 for k, v in groups.items())):
        raise ValueError(f"concurrency_groups of {what} must map group names to their max "
                         f"concurrency (an int >= 1), e.g. {{'io': 2}}, got {groups!r}")
    group = options.get("concurrency_group")
    if group is not None and not (isinstance(group, str) and group):
        raise ValueError(f"concurrency_group of {what} must be the name of one of the actor's "
                         f"concurrency_groups, got {group!r}")
    pending = options.get("max_pending_calls")
    if pending is not None and (type(pending) is not int or pending < -1):
        raise ValueError(f"max_pending_calls of {what} must be -1 (no limit, as 0 is) or a "
                         f"positive int, got {pending!r}")
    _refuse_unsupported(options, what)
    return options


#: what runtime_env may hold: environment variables, and directories every rank can read
RUNTIME_ENV_KEYS = ("env_vars", "working_dir", "py_modules")


def check_runtime_env(env: Any, what: str) -> dict:
    """A runtime_env hpcray carries out (env_vars, working_dir, py_modules), its py_modules as
    absolute paths; anything else is refused with what to do instead."""
    if not isinstance(env, dict) or set(env) - set(RUNTIME_ENV_KEYS):
        extra = sorted(set(env) - set(RUNTIME_ENV_KEYS)) if isinstance(env, dict) else env
        raise ValueError(
            f"runtime_env of {what} may hold {list(RUNTIME_ENV_KEYS)}, not {extra!r}: "
            "install packages (pip, conda) in the job's environment, which every rank "
            "shares")
    env_vars = env.get("env_vars") or {}
    if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        raise ValueError(f"runtime_env['env_vars'] of {what} must map str to str")
    working_dir = env.get("working_dir")
    if working_dir is not None and not (isinstance(working_dir, str) and
                                        os.path.isdir(working_dir)):
        raise ValueError(f"runtime_env['working_dir'] of {what} must be a directory every "
                         f"rank can read (a shared file system path), got {working_dir!r}")
    if env.get("py_modules") is not None:  # as absolute paths, checked here
        env = {**env, "py_modules": py_modules.resolve(env["py_modules"], what)}
    return env


def merge_runtime_env(job: dict, own: dict | None) -> dict:
    """Ray's rule for a task's runtime_env under the job's: env_vars merge (the task's win),
    every other field of the task's replaces the job's."""
    if not own:
        return job
    merged = {**job, **own}
    if job.get("env_vars") and "env_vars" in own:
        merged["env_vars"] = {**job["env_vars"], **(own["env_vars"] or {})}
    return merged


def with_job_env(config: Any, own: dict | None, in_rank: bool) -> dict | None:
    """The runtime_env a task or actor runs with. Code that runs in its rank already has the
    job's (the rank's process took it at start), so it carries only its own."""
    job = config.runtime_env
    if not job or in_rank or config.execution == "thread":
        return own or None
    return merge_runtime_env(job, own)


def _refuse_unsupported(options: dict[str, Any], what: str) -> None:
    """Ray's options that hpcray accepts only in the forms it carries out."""
    if options.get("runtime_env"):
        options["runtime_env"] = check_runtime_env(options["runtime_env"], what)
    if options.get("label_selector"):
        raise ValueError(f"label_selector of {what}: ranks carry no labels; select them with "
                         "resources= (HPCRAY_RESOURCES) or NodeAffinitySchedulingStrategy")
    if options.get("placement_group_capture_child_tasks"):
        raise ValueError(f"placement_group_capture_child_tasks of {what} is not supported: "
                         "give child tasks the placement group's strategy themselves")
    accelerator = options.get("accelerator_type")
    if accelerator is not None and not isinstance(accelerator, str):
        raise ValueError(f"accelerator_type of {what} must be a str, got {accelerator!r}")
    calls = options.get("max_calls")
    if calls is not None and (not isinstance(calls, int) or calls < 0):
        raise ValueError(f"max_calls of {what} must be an int >= 0 (0: no limit), got {calls!r}")


def resources_of(options: dict[str, Any], default_cpus: float) -> dict[str, float]:
    cpus = options.get("num_cpus")
    out = {"CPU": float(default_cpus if cpus is None else cpus)}
    if options.get("num_gpus"):
        out["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        out["memory"] = float(options["memory"])
    for key, value in (options.get("resources") or {}).items():
        out[key] = float(value)
    if options.get("accelerator_type"):  # as in Ray: a resource the matching nodes advertise
        out[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    return {k: v for k, v in out.items() if v > 0}


def strategy_of(options: dict[str, Any]):
    """Turns scheduling options into the scheduler's strategy value."""
    strategy = options.get("scheduling_strategy")
    pg = options.get("placement_group")
    if (strategy is None or strategy == "DEFAULT") and pg in (None, "default"):
        return "DEFAULT"
    # hpcray.util's package imports the public API, which imports this module
    from ...util.scheduling_strategies import (
        NodeAffinitySchedulingStrategy,
        PlacementGroupSchedulingStrategy,
    )
    if getattr(strategy, "placement_group_capture_child_tasks", None):
        raise ValueError("placement_group_capture_child_tasks is not supported: give child "
                         "tasks the placement group's strategy themselves")
    if pg is not None and pg != "default":
        strategy = PlacementGroupSchedulingStrategy(pg, options.get("placement_group_bundle_index", -1))
    if strategy is None or strategy == DEFAULT:
        return DEFAULT
    if strategy == SPREAD:
        return SPREAD
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        if strategy.placement_group is None:
            return DEFAULT
        return InPlacementGroup(strategy.placement_group.id, strategy.placement_group_bundle_index)
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return NodeAffinity(strategy.node_id, strategy.soft)
    raise ValueError(f"unknown scheduling_strategy {strategy!r}: use 'DEFAULT', 'SPREAD', a "
                     "PlacementGroupSchedulingStrategy or a NodeAffinitySchedulingStrategy")


class CallShape:
    """The arguments a function or method accepts, as plain data (it travels with actor
    handles): ``.remote()`` checks a call against it and raises TypeError at the call site, as
    Ray does, instead of the task failing later on a worker."""

    __slots__ = ("kwonly", "lo", "positional", "posonly", "required_kw", "varargs", "varkw")

    def __init__(self, fn: Any, drop_first: bool = False):
        self.positional: list[tuple[str, bool]] = []  # (name, has a default)
        self.posonly: set[str] = set()
        self.kwonly: dict[str, bool] = {}
        self.varargs = self.varkw = True  # unknown signature (a builtin): accept anything
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            self.lo, self.required_kw = 0, False
            return
        self.varargs = self.varkw = False
        for p in params[1:] if drop_first else params:
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                self.positional.append((p.name, p.default is not p.empty))
                if p.kind is p.POSITIONAL_ONLY:
                    self.posonly.add(p.name)
            elif p.kind is p.VAR_POSITIONAL:
                self.varargs = True
            elif p.kind is p.KEYWORD_ONLY:
                self.kwonly[p.name] = p.default is not p.empty
            else:
                self.varkw = True
        self.lo = sum(1 for _, has_default in self.positional if not has_default)
        self.required_kw = not all(self.kwonly.values())

    def check(self, args: tuple, kwargs: dict, what: str) -> None:
        n = len(args)
        if not kwargs and not self.required_kw and self.lo <= n and (
                self.varargs or n <= len(self.positional)):
            return  # the common case, without building anything
        if n > len(self.positional) and not self.varargs:
            raise TypeError(f"{what}() takes {len(self.positional)} positional argument(s) but "
                            f"{n} were given")
        given = {name for name, _ in self.positional[:n]}
        for key in kwargs:
            if key in given and key not in self.posonly:
                raise TypeError(f"{what}() got multiple values for argument {key!r}")
            known = key in self.kwonly or (key not in self.posonly and any(
                key == name for name, _ in self.positional))
            if not known and not self.varkw:
                raise TypeError(f"{what}() got an unexpected keyword argument {key!r}")
        missing = [name for name, has_default in self.positional[n:]
                   if not has_default and (name not in kwargs or name in self.posonly)]
        missing += [name for name, has_default in self.kwonly.items()
                    if not has_default and name not in kwargs]
        if missing:
            raise TypeError(f"{what}() missing required argument(s): "
                            f"{', '.join(repr(m) for m in missing)}")


#: names whose use in a task's or actor's code means it needs its rank: hpcray.collective,
#: mpi_comm and mpi4py (the rank's MPI), CuPy (device arrays move by CUDA IPC and NCCL from
#: the rank); such code runs in the rank itself, not in an executor process
RANK_NAMES = frozenset({"collective", "init_collective_group", "create_collective_group",
                        "mpi_comm", "allreduce", "allgather", "reducescatter", "MPI", "mpi4py",
                        "cupy", "cp"})


def needs_rank(target: Any) -> bool:
    """Whether a remote function's or an actor class's code (its methods and the functions
    nested in them) names hpcray.collective, MPI or a device array library (CuPy, and the
    modules of ``HPCRAY_DEVICE_PLUGINS``)."""
    names = RANK_NAMES | {n.strip() for n in os.environ.get("HPCRAY_DEVICE_PLUGINS", "").split(",")
                          if n.strip()}
    stack = []
    values = [target] if not isinstance(target, type) else [
        v for klass in target.__mro__ if klass is not object for v in vars(klass).values()]
    for value in values:
        code = getattr(getattr(value, "__func__", value), "__code__", None)
        if code is not None:
            stack.append(code)
    seen: set[int] = set()
    while stack:
        code = stack.pop()
        if id(code) in seen:
            continue
        seen.add(id(code))
        if not names.isdisjoint(code.co_names):
            return True
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return False
