"""DQN: double Q-learning, dueling heads, n-step returns and prioritized replay."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from ...core.learner import Learner, to_tensors
from ...core.rl_module import DQNTorchRLModule
from ...utils.postprocessing import n_step_targets
from ...utils.replay_buffers import PrioritizedReplayBuffer, ReplayBuffer
from ...utils.schedules import piecewise
from ..algorithm import Algorithm
from ..algorithm_config import AlgorithmConfig

TRANSITION_KEYS = ("obs", "actions", "rewards", "next_obs", "terminateds", "discounts")


class DQNConfig(AlgorithmConfig):
    """RLlib's DQN defaults (new API stack)."""

    def __init__(self, algo_class: Any = None):
        super().__init__(algo_class or DQN)
        self.lr = 5e-4
        self.train_batch_size_per_learner = 32
        self.rollout_fragment_length = "auto"  # n_step steps per env
        self.min_sample_timesteps_per_iteration = 1000
        self.replay_buffer_config = {"type": "PrioritizedEpisodeReplayBuffer", "capacity": 50000,
                                     "alpha": 0.6, "beta": 0.4}
        self.num_steps_sampled_before_learning_starts = 1000
        self.target_network_update_freq = 500
        self.tau = 1.0
        self.double_q = True
        self.dueling = True
        self.n_step = 1
        self.td_error_loss_fn = "huber"
        self.epsilon = [(0, 1.0), (10000, 0.05)]
        self.training_intensity = None
        self.grad_clip = 40.0
        self.model_config = {"fcnet_hiddens": [256], "fcnet_activation": "relu"}


    def get_rollout_fragment_length(self) -> int:
        """"auto": n_step steps per env and sample call (one update follows each call)."""
        if self.rollout_fragment_length == "auto":
            return max(1, int(self.n_step))
        return int(self.rollout_fragment_length)


def make_replay_buffer(config: Any) -> ReplayBuffer:
    rb = dict(config.replay_buffer_config or {})
    seed = None if config.seed is None else [int(config.seed), 77]
    if "Prioritized" in str(rb.get("type", "")):
        return PrioritizedReplayBuffer(rb.get("capacity", 50000), rb.get("alpha", 0.6),
                                       rb.get("beta", 0.4), seed=seed)
    return ReplayBuffer(rb.get("capacity", 50000), seed=seed)


STEP_KEYS = ("obs", "actions", "rewards", "terminateds", "truncateds", "next_obs")


def transitions(fragment: dict, n_step: int, gamma: float, carry: dict
                ) -> dict[str, np.ndarray]:
    """A fragment's [T, N] steps as n-step transitions, flattened to rows.

    A step whose n-step window runs past the fragment's end (no done in between) is held
    back in carry with the last n - 1 steps and emitted from the next fragment, so every
    transition has its full n steps, as with RLlib's episode replay."""
    b = fragment["batch"]
    cols_n = b["rewards"].shape[1]
    held = carry.get("steps")
    full = {k: np.concatenate([held[k], b[k]]) if held else b[k] for k in STEP_KEYS}
    sent = carry.get("sent", np.zeros((0, cols_n), dtype=bool))
    horizon = len(full["rewards"])
    dones = full["terminateds"] | full["truncateds"]
    ret, nxt, term, disc = n_step_targets(full["rewards"], full["terminateds"], dones, n_step,
                                          gamma)
    cols = np.arange(cols_n)[None, :].repeat(horizon, 0)
    complete = (nxt - np.arange(horizon)[:, None] + 1 == n_step) | dones[nxt, cols]
    emit = complete.copy()
    emit[:len(sent)] &= ~sent
    keep = min(n_step - 1, horizon)
    carry["steps"] = {k: v[horizon - keep:] for k, v in full.items()} if keep else None
    carry["sent"] = complete[horizon - keep:]
    out = {"obs": full["obs"], "actions": full["actions"], "rewards": ret,
           "next_obs": full["next_obs"][nxt, cols], "terminateds": term, "discounts": disc}
    return {k: v[emit] for k, v in out.items()}


class DQNLearner(Learner):
    def build(self) -> None:
        super().build()
        self.target = copy.deepcopy(self.module)
        self.last_target_update = 0

    def update(self, batch: dict[str, np.ndarray], sampled_lifetime: int = 0, **_: Any) -> dict:
        cfg = self.config
        t = to_tensors(batch)
        q_all = self.module(t["obs"].float())["q_values"]
        q = q_all.gather(-1, t["actions"].long().unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            next_target = self.target(t["next_obs"].float())["q_values"]
            if cfg.double_q:
                best = self.module(t["next_obs"].float())["q_values"].argmax(-1, keepdim=True)
                next_q = next_target.gather(-1, best).squeeze(-1)
            else:
                next_q = next_target.max(-1).values
            y = t["rewards"] + t["discounts"] * (1.0 - t["terminateds"]) * next_q
        td = q - y
        if cfg.td_error_loss_fn == "huber":
            per_row = torch.nn.functional.huber_loss(q, y, reduction="none", delta=1.0)
        else:
            per_row = 0.5 * td ** 2
        loss = (t["weights"] * per_row).mean()
        norm = self.apply_gradients(loss, self.optimizer, list(self.module.parameters()))
        if sampled_lifetime - self.last_target_update >= cfg.target_network_update_freq:
            with torch.no_grad():
                for tp, p in zip(self.target.parameters(), self.module.parameters()):
                    tp.mul_(1 - cfg.tau).add_(cfg.tau * p)
            self.last_target_update = sampled_lifetime
        self.version += 1
        return {"default_policy": {"total_loss": float(loss.detach()),
                                   "qf_loss": float(loss.detach()),
                                   "qf_mean": float(q.detach().mean()),
                                   "td_error_mean": float(td.detach().abs().mean()),
                                   "gradients_default_optimizer_global_norm": norm},
                "td_error": td.detach().numpy()}

    def extra_state(self) -> dict:
        return {"target": self.target.state_dict(), "last": self.last_target_update}

    def set_extra_state(self, state: dict) -> None:
        self.target.load_state_dict(state["target"])
        self.last_target_update = state["last"]


class DQN(Algorithm):
    config_class = DQNConfig
    learner_class = DQNLearner
    default_module_class = DQNTorchRLModule
    epsilon_greedy = True

    @classmethod
    def build_module(cls, config, observation_space, action_space, seed):
        config = copy.copy(config)
        config.model_config = {**config.model_config, "dueling": config.dueling}
        return super().build_module(config, observation_space, action_space, seed)

    @staticmethod
    def sample_actions(module, obs, rng, explore, action_space, options):
        obs = np.asarray(obs, dtype=np.float32)
        fast = getattr(module, "fast_forward", None)
        q = (fast(obs) if fast is not None else
             {k: v.numpy() for k, v in module(torch.from_numpy(obs)).items()})["q_values"]
        actions = q.argmax(-1)
        if explore:
            eps = options.get("epsilon", 0.0)
            rand = rng.random(len(actions)) < eps
            actions = np.where(rand, rng.integers(0, q.shape[-1], len(actions)), actions)
        return actions, actions, {}

    @staticmethod
    def postprocess_fragment(module, fragment, config, carry):
        fragment["transitions"] = transitions(fragment, config.n_step, config.gamma, carry)
        del fragment["batch"]
        return fragment

    def setup_algorithm(self) -> None:
        self.replay = make_replay_buffer(self.config)

    def training_step(self) -> dict:
        cfg = self.config
        eps = piecewise(cfg.epsilon, self._counters["num_env_steps_sampled_lifetime"])
        fragments = self.sample_fragments(options={"epsilon": eps})
        sampled = 0
        for f in fragments:
            self.replay.add(f["transitions"])
            sampled += f["num_env_steps"]
        lifetime = self._counters["num_env_steps_sampled_lifetime"]
        if lifetime < cfg.num_steps_sampled_before_learning_starts:
            return {}
        bs = cfg.train_batch_size_per_learner * self.learner_group.size
        updates = 1
        if cfg.training_intensity:
            updates = max(1, round(sampled * cfg.training_intensity / bs))
        results: dict = {}
        for _ in range(updates):
            batch = self.replay.sample(bs)
            idx = batch.pop("batch_indexes")
            with self._timer("learner_update_timer"):
                results = self.learner_group.update(batch, sampled_lifetime=lifetime)
            self.replay.update_priorities(idx[:len(results["td_error"])], results["td_error"])
            self._counters["num_env_steps_trained_lifetime"] += bs
        self._push_weights()
        results.pop("td_error", None)
        results.pop("rows", None)
        if self.epsilon_greedy:
            results["default_policy"]["epsilon"] = eps
        return results

    def get_algorithm_state(self) -> dict:
        return {"replay": self.replay.get_state()}

    def set_algorithm_state(self, state: dict) -> None:
        self.replay.set_state(state["replay"])
