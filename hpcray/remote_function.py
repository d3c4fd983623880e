"""@remote functions."""

from __future__ import annotations

from typing import Any

from ._private.core import context
from ._private.core import options as opts
from ._private.core import protocol as P
from ._private.core.serialization import dumps_code


class CodeCache:
    """A function or class pickled once per process, with the id its rank gave it."""

    def __init__(self, code: Any):
        self.code = code
        self.key: tuple | None = None   # (runtime identity, code id)

    def id_and_blob(self, runtime) -> tuple[int, bytes | None]:
        key = self.key
        if key is not None and key[0] is runtime:
            return key[1], None
        try:
            blob = dumps_code(self.code)
        except Exception as exc:
            name = getattr(self.code, "__qualname__", repr(self.code))
            raise TypeError(f"could not serialize {name} to send it to other ranks: "
                            f"{type(exc).__name__}: {exc}. Something it uses (a global or closure "
                            "variable) cannot be pickled; create it inside the function instead."
                            ) from exc
        code_id = runtime.ids.next()
        runtime.functions[code_id] = self.code
        self.key = (runtime, code_id)
        return code_id, blob

    def __reduce__(self):
        return (CodeCache, (self.code,))


class RemoteFunction:
    """A function turned into a task by ``@hpcray.remote``; call it with ``.remote()``."""

    def __init__(self, function, options: dict[str, Any], cache: CodeCache | None = None):
        self._function = function
        self._options = opts.validate(dict(options), opts.TASK, f"task {function.__qualname__}")
        self._cache = cache or CodeCache(function)
        self._shape = opts.CallShape(function)
        self._needs_rank: bool | None = None
        self.__name__ = getattr(function, "__name__", "task")
        self.__doc__ = function.__doc__

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self.__name__} cannot be called directly: use "
                        f"{self.__name__}.remote(...)")

    def _task_options(self, config) -> dict[str, Any]:
        """What the executing side needs of the options (most tasks: nothing)."""
        o = self._options
        in_rank = self._in_rank()
        out: dict[str, Any] = {"in_rank": True} if in_rank else {}
        env = opts.with_job_env(config, o.get("runtime_env"), in_rank or bool(o.get("num_gpus")))
        if env:
            out["runtime_env"] = env
        if o.get("max_calls"):
            out["max_calls"] = o["max_calls"]
        return out

    def _submit_options(self, runtime) -> dict[str, Any]:
        out = self._task_options(runtime.config)
        parent = getattr(runtime.local, "task_id", 0)
        if parent:  # submitted by a task: cancel(recursive=True) on it reaches this one
            out["parent"] = parent
        return out

    def _in_rank(self) -> bool:
        """Run in the rank itself: asked for, or the code uses MPI or device arrays."""
        if self._options.get("in_rank") is not None:
            return bool(self._options["in_rank"])
        if self._needs_rank is None:
            self._needs_rank = opts.needs_rank(self._function)
        return self._needs_rank

    def options(self, **options) -> RemoteFunction:
        """A copy with these options changed (num_cpus, num_returns, scheduling_strategy, ...)."""
        return RemoteFunction(self._function, {**self._options, **options}, self._cache)

    def _remote(self, args: tuple | None = None, kwargs: dict | None = None, **options):
        """Ray's internal spelling, which Ray's own libraries call: options and arguments."""
        return self.options(**options).remote(*(args or ()), **(kwargs or {}))

    def remote(self, *args, **kwargs):
        """Submits the task; returns an ObjectRef (a list of them when num_returns > 1)."""
        runtime = context.runtime()
        o = self._options
        name = o.get("name") or self._function.__qualname__
        self._shape.check(args, kwargs, name)
        packed, deps, contained, big = runtime.pack_args(args, kwargs, name)
        strategy = opts.strategy_of(o)  # (may refuse: before the code counts as sent)
        fn_id, blob = self._cache.id_and_blob(runtime)
        retry = o.get("retry_exceptions", False)
        spec = P.TaskSpec(
            task_id=runtime.ids.next(), kind=P.NORMAL, name=name, fn_id=fn_id, fn_blob=blob,
            args=packed, deps=deps, contained=contained, resources=opts.resources_of(o, 1),
            strategy=strategy, max_retries=o.get("max_retries", 3),
            retry_exceptions=dumps_code(tuple(retry)) if isinstance(retry, (list, tuple))
            else bool(retry), options=self._submit_options(runtime))
        num_returns = o.get("num_returns", 1)
        try:
            refs = runtime.submit(spec, num_returns)
        except Exception:
            self._cache.key = None
            raise
        runtime.settle_borrowed(big)
        if num_returns == 1:
            return refs[0]
        return refs if num_returns else None
