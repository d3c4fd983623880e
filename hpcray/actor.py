"""@remote classes: actors, their handles and methods."""

from __future__ import annotations

import inspect
from typing import Any

from ._private.core import context
from ._private.core import options as opts
from ._private.core import protocol as P
from ._private.core.serialization import dumps_code
from .object_ref import ObjectRef
from .remote_function import CodeCache


def method(num_returns: int | None = None, **options):
    """Decorates an actor method with defaults for its calls, e.g. ``@hpcray.method(num_returns=2)``."""
    options = opts.validate({**options, "num_returns": num_returns} if num_returns is not None
                            else options, opts.METHOD, "an actor method")

    def wrap(fn):
        fn.__hpcray_options__ = options
        return fn

    return wrap


def _class_info(cls) -> tuple[str, dict[str, dict], dict[str, opts.CallShape]]:
    """(name, {method: its call options}, {method: its CallShape}), sent with every handle."""
    methods, shapes = {}, {}
    for name, member in inspect.getmembers(cls, callable):
        if name.startswith("__") and name not in ("__call__",):
            continue
        methods[name] = dict(getattr(member, "__hpcray_options__", {}))
        bound = isinstance(inspect.getattr_static(cls, name), (staticmethod, classmethod))
        shapes[name] = opts.CallShape(member, drop_first=not bound)
    for name in ("__ray_ready__", "__ray_terminate__"):  # every actor has Ray's built-in ones
        methods[name], shapes[name] = {}, opts.CallShape(_no_arguments)
    return cls.__name__, methods, shapes


def _no_arguments() -> None:
    """The signature of the built-in actor methods."""


def exit_actor() -> None:
    """Ends the calling actor from inside one of its methods (Ray's ``exit_actor``): pending
    and later calls raise ActorDiedError; the method does not return."""
    from ._private.core.runner import exit_actor as end

    end()


class ActorClass:
    """A class turned into an actor factory by ``@hpcray.remote``; create with ``.remote()``."""

    def __init__(self, cls, options: dict[str, Any], cache: CodeCache | None = None):
        self._cls = cls
        self._options = opts.validate(dict(options), opts.ACTOR, f"actor {cls.__qualname__}")
        self._cache = cache or CodeCache(cls)
        self._info: tuple | None = None
        self._needs_rank: bool | None = None
        self.__name__ = cls.__name__
        self.__doc__ = cls.__doc__

    def _in_rank(self, options: dict[str, Any]) -> bool:
        """Run in the rank itself: asked for, or the class uses collectives or MPI."""
        if options.get("in_rank") is not None:
            return bool(options["in_rank"])
        if self._needs_rank is None:
            self._needs_rank = opts.needs_rank(self._cls)
        return self._needs_rank

    def __getattr__(self, name: str) -> Any:
        """The class's own attributes (constants, static helpers), as Ray's ActorClass."""
        if name.startswith("__") or name == "_cls":
            raise AttributeError(name)
        return getattr(self._cls, name)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor class {self.__name__} cannot be instantiated directly: use "
                        f"{self.__name__}.remote(...)")

    def options(self, **options) -> ActorClass:
        """A copy with these options changed (name, lifetime, num_cpus, max_concurrency, ...)."""
        if "concurrency_groups" in options:  # as in Ray: the class's own, from @remote
            raise ValueError("Setting 'concurrency_groups' is not supported in '.options()': "
                             "give them to @remote(concurrency_groups={...})")
        return ActorClass(self._cls, {**self._options, **options}, self._cache)

    def _remote(self, args: tuple | None = None, kwargs: dict | None = None,
                **options) -> ActorHandle:
        """Ray's internal spelling, which Ray's own libraries call: options and arguments."""
        return self.options(**options).remote(*(args or ()), **(kwargs or {}))

    def remote(self, *args, **kwargs) -> ActorHandle:
        """Creates the actor on some rank; returns its handle at once."""
        runtime = context.runtime()
        o = self._options
        name = o.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"an actor's name must be a non-empty string, got {name!r}")
        namespace = o.get("namespace")
        if namespace is None:
            namespace = runtime.config.namespace
        if name is not None and o.get("get_if_exists"):
            try:
                return get_actor(name, namespace)
            except ValueError:
                pass
        if self._info is None:
            self._info = _class_info(self._cls)
            self._init_shape = opts.CallShape(self._cls.__init__, drop_first=True)
        limit = o.get("max_pending_calls") or -1
        extra: dict[str, Any] = {"max_pending_calls": limit} if limit > 0 else {}
        groups = o.get("concurrency_groups") or {}
        for method_name, method_options in self._info[1].items():
            group = method_options.get("concurrency_group")
            if group is not None and group not in groups:
                raise ValueError(f"{self.__name__}.{method_name} is in concurrency group "
                                 f"{group!r}, which the actor does not define (its "
                                 f"concurrency_groups: {sorted(groups)}); add it to "
                                 "@remote(concurrency_groups={...})")
        if groups:
            extra["concurrency_groups"] = sorted(groups)
        info = (*self._info, extra) if extra else self._info
        self._init_shape.check(args, kwargs, f"{self.__name__}.__init__")
        packed, deps, contained, big = runtime.pack_args(args, kwargs, f"{self.__name__}.__init__")
        strategy = opts.strategy_of(o)  # (may refuse: before the code counts as sent)
        fn_id, blob = self._cache.id_and_blob(runtime)
        explicit = o.get("num_cpus") is not None
        in_rank = self._in_rank(o)
        placement = opts.resources_of(o, 1)
        lifetime = opts.resources_of(o, 0) if not explicit else dict(placement)
        spec = P.TaskSpec(
            task_id=runtime.ids.next(), kind=P.ACTOR_CREATE, name=f"{self.__name__}.__init__",
            fn_id=fn_id, fn_blob=blob, args=packed, deps=deps, contained=contained,
            resources=placement, strategy=strategy, actor_id=runtime.ids.next(),
            options={"name": name, "namespace": namespace, "lifetime": o.get("lifetime"),
                     "class_info": info, "in_rank": in_rank,
                     "max_restarts": o.get("max_restarts") or 0,
                     "max_task_retries": o.get("max_task_retries") or 0,
                     "runtime_env": opts.with_job_env(runtime.config, o.get("runtime_env"),
                                                      in_rank or bool(o.get("num_gpus"))),
                     "max_concurrency": o.get("max_concurrency"), "lifetime_resources": lifetime,
                     "concurrency_groups": groups})
        try:
            handle_ref = runtime.submit(spec, 1)[0]
        except Exception:
            self._cache.key = None
            raise
        runtime.settle_borrowed(big)
        return ActorHandle(spec.actor_id, handle_ref, info)


class ActorHandle:
    """A handle to a live actor; call methods with ``handle.method.remote(...)``."""

    def __init__(self, actor_id: int, handle_ref: ObjectRef, class_info: tuple):
        self._actor_id = actor_id
        self._handle_ref = handle_ref
        self._class_name, self._methods = class_info[0], class_info[1]
        self._shapes = class_info[2] if len(class_info) > 2 else {}
        # what this actor's options add (max_pending_calls, concurrency groups)
        self._extra = class_info[3] if len(class_info) > 3 else {}

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods", {})
        if name in methods:
            return ActorMethod(self, name, methods[name])
        raise AttributeError(f"actor {self.__dict__.get('_class_name', '?')} has no method {name!r}")

    def __reduce__(self):
        return (ActorHandle, (self._actor_id, self._handle_ref,
                              (self._class_name, self._methods, self._shapes, self._extra)))

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id:016x})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


class ActorMethod:
    """``handle.method``: ``.remote(...)`` submits a call, ``.options(num_returns=...)``."""

    def __init__(self, handle: ActorHandle, name: str, options: dict):
        self._handle = handle
        self._name = name
        self._options = options

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor method {self._name} cannot be called directly: use "
                        f".{self._name}.remote(...)")

    def options(self, **options) -> ActorMethod:
        opts.validate(options, opts.METHOD, f"actor method {self._name}")
        return ActorMethod(self._handle, self._name, {**self._options, **options})

    def remote(self, *args, **kwargs):
        runtime = context.runtime()
        handle = self._handle
        name = f"{handle._class_name}.{self._name}"
        shape = handle._shapes.get(self._name)
        if shape is not None:
            shape.check(args, kwargs, name)
        packed, deps, contained, big = runtime.pack_args(args, kwargs, name)
        retry = self._options.get("retry_exceptions", False)
        group = self._options.get("concurrency_group")
        if group is not None and group not in handle._extra.get("concurrency_groups", ()):
            raise ValueError(f"{name}: the actor has no concurrency group {group!r} (its "
                             f"concurrency_groups: {handle._extra.get('concurrency_groups', [])})")
        spec = P.TaskSpec(task_id=runtime.ids.next(), kind=P.ACTOR_CALL, name=name, args=packed,
                          deps=deps, contained=contained, actor_id=handle._actor_id,
                          method=self._name, max_retries=self._options.get("max_task_retries"),
                          retry_exceptions=dumps_code(tuple(retry))
                          if isinstance(retry, (list, tuple)) else bool(retry),
                          options={"concurrency_group": group} if group else {})
        parent = getattr(runtime.local, "task_id", 0)
        if parent:  # called from a task: cancel(recursive=True) on it reaches this call
            spec.options["parent"] = parent
        num_returns = self._options.get("num_returns", 1)
        limit = handle._extra.get("max_pending_calls", 0)
        if limit:
            runtime.pending_calls.admit(
                handle._actor_id, limit, spec.task_id,
                lambda ids: runtime.request("unfinished", ids), f"{name}.remote()")
        try:
            refs = runtime.submit(spec, num_returns)
        except Exception:
            if limit:
                runtime.pending_calls.forget(handle._actor_id, spec.task_id)
            raise
        runtime.settle_borrowed(big)
        if num_returns == 1:
            return refs[0]
        return refs if num_returns else None


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor created with ``.options(name=name)``, in ``namespace``
    (default: the job's, from ``init(namespace=...)``)."""
    runtime = context.runtime()
    if namespace is None:
        namespace = runtime.config.namespace
    actor_id, handle_id, info = runtime.request("get_actor", name, namespace)
    return ActorHandle(actor_id, ObjectRef(handle_id), info)
