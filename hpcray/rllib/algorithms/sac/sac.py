"""SAC: squashed Gaussian policy, twin Q networks with soft target updates, automatic entropy
temperature; replay (prioritized by default) with n-step returns as in DQN."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from ...core.learner import Learner, to_tensors
from ...core.rl_module import SACTorchRLModule
from ..algorithm_config import AlgorithmConfig
from ..dqn.dqn import DQN, DQNConfig

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class SACConfig(AlgorithmConfig):
    """RLlib's SAC defaults (new API stack)."""

    def __init__(self, algo_class: Any = None):
        super().__init__(algo_class or SAC)
        self.lr = None
        self.actor_lr = 3e-5
        self.critic_lr = 3e-4
        self.alpha_lr = 3e-4
        self.tau = 5e-3
        self.initial_alpha = 1.0
        self.target_entropy: float | str = "auto"
        self.twin_q = True
        self.n_step = 1
        self.train_batch_size_per_learner = 256
        self.rollout_fragment_length = "auto"
        self.min_sample_timesteps_per_iteration = 100
        self.replay_buffer_config = {"type": "PrioritizedEpisodeReplayBuffer",
                                     "capacity": 1_000_000, "alpha": 0.6, "beta": 0.4}
        self.num_steps_sampled_before_learning_starts = 1500
        self.target_network_update_freq = 0
        self.training_intensity = None
        self.grad_clip = None
        self.epsilon = 0.0
        self.model_config = {"fcnet_hiddens": [256, 256], "fcnet_activation": "relu"}

    get_rollout_fragment_length = DQNConfig.get_rollout_fragment_length


def squashed_sample(inputs: torch.Tensor, noise: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """tanh(mean + std * noise) and its log-probability (with the tanh correction)."""
    mean, log_std = torch.chunk(inputs, 2, dim=-1)
    log_std = torch.clamp(log_std, LOG_STD_MIN, LOG_STD_MAX)
    if noise is None:
        noise = torch.randn_like(mean)
    u = mean + torch.exp(log_std) * noise
    a = torch.tanh(u)
    logp = (-0.5 * noise ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
    logp = logp - torch.log(1 - a ** 2 + 1e-6).sum(-1)
    return a, logp


class SACLearner(Learner):
    def build(self) -> None:
        cfg = self.config
        m = self.module
        self.target = copy.deepcopy(m)
        self.actor_opt = torch.optim.Adam(m.policy.parameters(), lr=cfg.actor_lr)
        self.critic_params = [*m.q1.parameters(), *m.q2.parameters()]
        self.critic_opt = torch.optim.Adam(self.critic_params, lr=cfg.critic_lr)
        self.log_alpha = torch.tensor(float(np.log(cfg.initial_alpha)), requires_grad=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        dim = int(np.prod(self.action_space.shape))
        self.target_entropy = (-float(dim) if cfg.target_entropy == "auto"
                               else float(cfg.target_entropy))
        self.gen = torch.Generator().manual_seed(
            0 if cfg.seed is None else int(cfg.seed) * 7919 + self.learner_index)

    def optimizers(self) -> dict:
        return {"actor": self.actor_opt, "critic": self.critic_opt, "alpha": self.alpha_opt}

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        mean, _ = torch.chunk(like, 2, dim=-1)
        return torch.randn(mean.shape, generator=self.gen)

    def update(self, batch: dict[str, np.ndarray], **_: Any) -> dict:
        m, t = self.module, to_tensors(batch)
        obs, next_obs = t["obs"].float(), t["next_obs"].float()
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            nxt_in = m.pi(next_obs)
            next_a, next_logp = squashed_sample(nxt_in, self._noise(nxt_in))
            tq1, tq2 = self.target.q(next_obs, next_a)
            next_q = torch.minimum(tq1, tq2) if self.config.twin_q else tq1
            y = t["rewards"] + t["discounts"] * (1 - t["terminateds"]) * (
                next_q - alpha * next_logp)
        q1, q2 = m.q(obs, t["actions"].float())
        td = q1 - y
        critic_loss = 0.5 * (t["weights"] * (td ** 2 + (q2 - y) ** 2)).mean()
        self.apply_gradients(critic_loss, self.critic_opt, self.critic_params)

        pi_in = m.pi(obs)
        a, logp = squashed_sample(pi_in, self._noise(pi_in))
        nq1, nq2 = m.q(obs, a)
        actor_loss = (alpha * logp - torch.minimum(nq1, nq2)).mean()
        self.apply_gradients(actor_loss, self.actor_opt, list(m.policy.parameters()))

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.apply_gradients(alpha_loss, self.alpha_opt, [self.log_alpha])
        with torch.no_grad():
            tau = self.config.tau
            for tp, p in zip(self.target.parameters(), m.parameters()):
                tp.mul_(1 - tau).add_(tau * p)
        self.version += 1
        return {"default_policy": {"qf_loss": float(critic_loss.detach()),
                                   "policy_loss": float(actor_loss.detach()),
                                   "alpha_loss": float(alpha_loss.detach()),
                                   "alpha_value": float(alpha),
                                   "qf_mean": float(q1.detach().mean()),
                                   "total_loss": float(critic_loss.detach() + actor_loss.detach())},
                "td_error": td.detach().numpy()}

    def extra_state(self) -> dict:
        return {"target": self.target.state_dict(), "log_alpha": float(self.log_alpha.detach()),
                "gen": self.gen.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.target.load_state_dict(state["target"])
        with torch.no_grad():
            self.log_alpha.fill_(state["log_alpha"])
        self.gen.set_state(state["gen"])


class SAC(DQN):
    config_class = SACConfig
    learner_class = SACLearner
    default_module_class = SACTorchRLModule
    epsilon_greedy = False

    @classmethod
    def build_module(cls, config, observation_space, action_space, seed):
        return super(DQN, cls).build_module(config, observation_space, action_space, seed)

    @staticmethod
    def sample_actions(module, obs, rng, explore, action_space, options):
        inputs = module.pi(torch.from_numpy(np.asarray(obs, dtype=np.float32))).numpy()
        mean, log_std = np.split(inputs, 2, axis=-1)
        log_std = np.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
        u = mean + np.exp(log_std) * rng.standard_normal(mean.shape) if explore else mean
        a = np.tanh(u).astype(np.float32)
        low, high = action_space.low, action_space.high
        return (low + (a + 1.0) * 0.5 * (high - low)).astype(np.float32), a, {}
