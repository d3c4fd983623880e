"""EnvRunnerGroup: the env runners of an algorithm (actors, or one in-process runner), their
weights (one put per update) and their replacement when one fails."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

import hpcray

from .env_runner import EnvRunner

_remote_runners: dict = {}


def runner_class(config: Any) -> type:
    if config.is_multi_agent:
        from .multi_agent_env import MultiAgentEnvRunner

        return MultiAgentEnvRunner
    return EnvRunner


def _runner_actor_class(config: Any):
    cls = runner_class(config)
    if cls not in _remote_runners:
        _remote_runners[cls] = hpcray.remote(cls)
    return _remote_runners[cls]


class EnvRunnerGroup:
    """num_env_runners actors (indices 1..n), or a local runner (index 0) when n == 0."""

    def __init__(self, config: Any, generation: int = 0):
        self.config = config
        self.num_restarts = 0
        self.num_dropped = 0
        self.generation = generation
        self.local: EnvRunner | None = None
        self.remote: list = []
        if config.num_env_runners == 0:
            self.local = runner_class(config)(config, 0, generation)
        else:
            self.remote = [self._make(i + 1) for i in range(config.num_env_runners)]
            hpcray.get([r.ping.remote() for r in self.remote])
        self.weights_ref = None
        self.weights = None
        self.version = -1

    def _make(self, index: int, generation: int | None = None):
        cls = _runner_actor_class(self.config).options(num_cpus=self.config.num_cpus_per_env_runner)
        return cls.remote(self.config, index, self.generation if generation is None
                          else generation)

    def sync_weights(self, weights: dict, version: int) -> None:
        """Publishes new weights: one put, read by every runner at its next sample."""
        self.version = version
        if self.local is not None:
            self.local.set_weights(weights, version)
        else:
            self.weights_ref = hpcray.put(weights)

    def foreach_env_runner(self, func: Callable[[Any], Any], *, local_env_runner: bool = True,
                           remote_worker_ids: list[int] | None = None, **_: Any) -> list:
        """[func(runner) for every runner]: the local one (when sampling happens here and
        local_env_runner), then the remote ones (ids 1..n, or remote_worker_ids), each with
        the newest weights loaded."""
        out = []
        if self.local is not None and local_env_runner:
            out.append(self.local.apply(func))
        ids = remote_worker_ids or range(1, len(self.remote) + 1)
        refs = [self.remote[i - 1].apply.remote(func, self.weights_ref, self.version)
                for i in ids]
        return out + (hpcray.get(refs) if refs else [])

    def foreach_env_runner_with_id(self, func: Callable[[int, Any], Any], **kwargs: Any) -> list:
        """Like foreach_env_runner, with func(runner_id, runner) (0: the local runner)."""
        return self.foreach_env_runner(lambda runner: func(runner.worker_index, runner), **kwargs)

    foreach_worker = foreach_env_runner
    foreach_worker_with_id = foreach_env_runner_with_id

    def num_healthy(self) -> int:
        return 1 if self.local is not None else len(self.remote)

    def sample_async(self, index: int, **kwargs: Any):
        return self.remote[index].sample.remote(self.weights_ref, self.version, **kwargs)

    def sample(self, **kwargs: Any) -> list[dict]:
        """One fragment from every runner; a failed runner is replaced and its fragment dropped."""
        if self.local is not None:
            return [self.local.sample(**kwargs)]
        while True:
            refs = [self.sample_async(i, **kwargs) for i in range(len(self.remote))]
            fragments = []
            for i, ref in enumerate(refs):
                try:
                    fragments.append(hpcray.get(ref))
                except Exception as exc:  # noqa: BLE001 - any runner failure is handled alike
                    self.on_failure(i, exc)
            if fragments:
                return fragments

    def sample_async_ready(self, min_fragments: int = 1, **kwargs: Any) -> list[dict]:
        """Asynchronous sampling (APPO/IMPALA): every runner keeps one request in flight, made
        with the newest weights when its last one was collected; returns the fragments ready
        now (at least min_fragments)."""
        if self.local is not None:
            return [self.local.sample(**kwargs)]
        if not hasattr(self, "in_flight"):
            self.in_flight: dict = {}
        for i in range(len(self.remote)):
            if i not in self.in_flight:
                self.in_flight[i] = self.sample_async(i, **kwargs)
        fragments: list[dict] = []
        while len(fragments) < min_fragments:
            by_ref = {ref: i for i, ref in self.in_flight.items()}
            ready, _ = hpcray.wait(list(by_ref), num_returns=1)
            ready, _ = hpcray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
            for ref in ready:
                i = by_ref[ref]
                del self.in_flight[i]
                try:
                    fragments.append(hpcray.get(ref))
                except Exception as exc:  # noqa: BLE001 - any runner failure is handled alike
                    self.on_failure(i, exc)
                self.in_flight[i] = self.sample_async(i, **kwargs)
        return fragments

    def on_failure(self, index: int, exc: BaseException) -> None:
        """Replaces runner index (restart_failed_env_runners) or re-raises."""
        cfg = self.config
        if not cfg.restart_failed_env_runners or self.num_restarts >= cfg.max_num_env_runner_restarts:
            raise exc
        self.num_restarts += 1
        self.num_dropped += 1
        print(f"hpcray.rllib: env runner {index + 1} failed ({type(exc).__name__}: "
              f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); replacing it",
              file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):  # it may already be gone
            hpcray.kill(self.remote[index])
        self.remote[index] = self._make(index + 1, self.generation + 1000 * self.num_restarts)
        hpcray.get(self.remote[index].ping.remote())

    def get_states(self) -> list[bytes]:
        if self.local is not None:
            return [self.local.get_state()]
        return hpcray.get([r.get_state.remote() for r in self.remote])

    def set_states(self, states: list[bytes]) -> bool:
        """Restores runner states when the runner count matches; False (fresh runners) if not."""
        if len(states) != self.num_healthy():
            return False
        if self.local is not None:
            self.local.set_state(states[0])
        else:
            hpcray.get([r.set_state.remote(s) for r, s in zip(self.remote, states)])
        return True

    def stop(self) -> None:
        self.in_flight = {}
        if self.local is not None:
            self.local.stop()
        for r in self.remote:
            with contextlib.suppress(Exception):  # it may already be gone
                hpcray.kill(r)
        self.remote = []
