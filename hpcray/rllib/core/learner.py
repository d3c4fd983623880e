"""Learner: owns the module and its optimizers and updates them from batches.

With ``num_learners > 1`` every learner is an actor in one hpcray.collective group; each gets
its shard of the batch and the gradients are averaged with one allreduce per optimizer step,
so all learners hold the same weights.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch


class Learner:
    """Base class: subclasses implement ``build()`` (optimizers) and ``update(batch)``."""

    def __init__(self, config: Any, observation_space, action_space, learner_index: int = 0,
                 num_learners: int = 1, group_name: str | None = None):
        torch.set_num_threads(1)
        self.config = config
        self.observation_space, self.action_space = observation_space, action_space
        self.learner_index, self.num_learners, self.group_name = (
            learner_index, num_learners, group_name)
        if group_name is not None:
            import hpcray.collective as col

            if not col.is_group_initialized(group_name):
                col.init_collective_group(num_learners, learner_index, backend="mpi",
                                          group_name=group_name)
        self.module = config.algo_class.build_module(config, observation_space, action_space,
                                                     seed=config.seed)
        self.rng = np.random.default_rng(
            None if config.seed is None else [int(config.seed), 1_000_003, learner_index])
        self.version = 0
        self.build()

    def build(self) -> None:
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.config.lr)

    def ping(self) -> int:
        return self.learner_index

    def apply_gradients(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                        params: list[torch.nn.Parameter]) -> float:
        """backward, allreduce (average) over the learner group, clip, step; returns the norm."""
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        if self.group_name is not None:
            import hpcray.collective as col

            flat = torch.cat([p.grad.reshape(-1) for p in params])
            col.allreduce(flat, group_name=self.group_name, op=col.ReduceOp.AVG)
            offset = 0
            for p in params:
                n = p.grad.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n
        clip = self.config.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
        optimizer.step()
        return float(norm)

    def minibatches(self, n: int, minibatch_size: int | None, num_epochs: int):
        """Shuffled index arrays, num_epochs passes over n rows (the same count on all learners)."""
        size = min(n, minibatch_size or n)
        for _ in range(num_epochs):
            perm = self.rng.permutation(n)
            for start in range(0, n - size + 1, size):
                yield perm[start:start + size]

    def update(self, batch: dict[str, np.ndarray], **kwargs: Any) -> dict:
        raise NotImplementedError

    def get_weights(self) -> dict:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def set_weights(self, weights: dict) -> None:
        self.module.load_state_dict(weights)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"default": self.optimizer}

    def get_state(self) -> bytes:
        state = {"module": self.module.state_dict(),
                 "optim": {k: o.state_dict() for k, o in self.optimizers().items()},
                 "extra": self.extra_state(), "rng": self.rng.bit_generator.state,
                 "version": self.version}
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def set_state(self, blob: bytes) -> None:
        state = torch.load(io.BytesIO(blob), weights_only=False)
        self.module.load_state_dict(state["module"])
        for key, opt in self.optimizers().items():
            if key in state["optim"]:
                lrs = [g["lr"] for g in opt.param_groups]
                opt.load_state_dict(state["optim"][key])
                for g, lr in zip(opt.param_groups, lrs):
                    g["lr"] = lr  # the current config's lr wins (PBT explores it)
        self.set_extra_state(state["extra"])
        self.rng.bit_generator.state = state["rng"]
        self.version = state["version"]

    def extra_state(self) -> dict:
        return {}

    def set_extra_state(self, state: dict) -> None:
        pass


class MultiAgentLearner:
    """One learner of the algorithm's class per policy (the multi-agent case)."""

    def __init__(self, config: Any, spaces: dict, _: Any = None, learner_index: int = 0,
                 num_learners: int = 1, group_name: str | None = None):
        base = config.algo_class.learner_class
        self.learners = {pid: base(config, *spaces[pid], learner_index, num_learners, group_name)
                         for pid in sorted(spaces)}
        trainable = config.policies_to_train
        self.trainable = set(self.learners) if trainable is None else set(trainable)

    def ping(self) -> int:
        return 0

    def update(self, batches: dict[str, dict], **kwargs: Any) -> dict:
        out = {}
        for pid, batch in batches.items():
            if pid in self.trainable and len(batch["obs"]):
                out[pid] = self.learners[pid].update(batch, **kwargs)["default_policy"]
        return out

    def get_weights(self) -> dict:
        return {pid: lrn.get_weights() for pid, lrn in self.learners.items()}

    def set_weights(self, weights: dict) -> None:
        for pid, w in weights.items():
            self.learners[pid].set_weights(w)

    def get_state(self) -> bytes:
        import pickle

        return pickle.dumps({pid: lrn.get_state() for pid, lrn in self.learners.items()})

    def set_state(self, blob: bytes) -> None:
        import pickle

        for pid, state in pickle.loads(blob).items():
            self.learners[pid].set_state(state)


def to_tensors(batch: dict[str, np.ndarray], idx: np.ndarray | None = None
               ) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v if idx is None else v[idx]))
            for k, v in batch.items() if isinstance(v, np.ndarray)}
