"""LearnerGroup: one local learner (num_learners=0) or learner actors in a collective group."""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import Any

import numpy as np

import hpcray

_groups = itertools.count()


class LearnerGroup:
    def __init__(self, config: Any, observation_space, action_space):
        cls = config.algo_class.learner_class
        if config.is_multi_agent:
            from .learner import MultiAgentLearner

            cls = MultiAgentLearner
        self.config = config
        self.local = None
        self.remote: list = []
        n = config.num_learners
        if n == 0:
            self.local = cls(config, observation_space, action_space)
            return
        group = f"rllib-learners-{os.getpid()}-{next(_groups)}" if n > 1 else None
        actor = hpcray.remote(cls).options(num_cpus=config.num_cpus_per_learner, in_rank=True,
                                           num_gpus=config.num_gpus_per_learner or None)
        self.remote = [actor.remote(config, observation_space, action_space, i, n, group)
                       for i in range(n)]
        hpcray.get([r.ping.remote() for r in self.remote])
        if config.seed is None and n > 1:  # without a seed the inits differ: start from #0's
            weights = hpcray.get(self.remote[0].get_weights.remote())
            hpcray.get([r.set_weights.remote(weights) for r in self.remote[1:]])

    @property
    def size(self) -> int:
        return max(1, len(self.remote))

    def update(self, batch: dict[str, np.ndarray], **kwargs: Any) -> dict:
        """Each learner updates on its shard (equal sizes); returns learner 0's metrics."""
        if self.local is not None:
            return self.local.update(batch, **kwargs)
        n = len(self.remote)
        rows = len(batch["obs"]) // n * n
        shards = [{k: (v[i * rows // n:(i + 1) * rows // n] if isinstance(v, np.ndarray) else v)
                   for k, v in batch.items()} for i in range(n)]
        results = hpcray.get([r.update.remote(s, **kwargs)
                              for r, s in zip(self.remote, shards)])
        merged = results[0]
        if "td_error" in merged:  # per-row values (replay priorities) of every shard
            merged["td_error"] = np.concatenate([r["td_error"] for r in results])
            merged["rows"] = rows
        return merged

    def call(self, method: str, *args: Any) -> Any:
        """method on learner 0 (all learners hold the same weights)."""
        if self.local is not None:
            return getattr(self.local, method)(*args)
        return hpcray.get(getattr(self.remote[0], method).remote(*args))

    def call_all(self, method: str, *args: Any) -> None:
        if self.local is not None:
            getattr(self.local, method)(*args)
        else:
            hpcray.get([getattr(r, method).remote(*args) for r in self.remote])

    def stop(self) -> None:
        for r in self.remote:
            with contextlib.suppress(Exception):  # it may already be gone
                hpcray.kill(r)
        self.remote = []
