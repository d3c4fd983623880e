"""APPO and IMPALA: env runners sample asynchronously (each keeps a request in flight with the
newest weights it was given); the learner corrects the lag with V-trace."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core.learner import Learner, to_tensors
from ...core.rl_module import TorchDist
from ...utils.postprocessing import vtrace
from ..algorithm_config import AlgorithmConfig
from ..ppo.ppo import PPO, ppo_surrogate

KEYS = ("obs", "next_obs", "actions", "action_logp", "rewards", "terminateds", "truncateds")


class IMPALAConfig(AlgorithmConfig):
    """RLlib's IMPALA defaults (new API stack)."""

    def __init__(self, algo_class: Any = None):
        super().__init__(algo_class or IMPALA)
        self.lr = 5e-4
        self.train_batch_size_per_learner = 500
        self.rollout_fragment_length = 50
        self.num_epochs = 1
        self.minibatch_size = None
        self.vtrace = True
        self.vtrace_clip_rho_threshold = 1.0
        self.vtrace_clip_pg_rho_threshold = 1.0
        self.vf_loss_coeff = 0.5
        self.entropy_coeff = 0.01
        self.grad_clip = 40.0
        self.model_config = {"fcnet_hiddens": [256, 256], "fcnet_activation": "tanh"}


class APPOConfig(IMPALAConfig):
    """RLlib's APPO defaults: IMPALA plus PPO's clipped surrogate (no KL term by default)."""

    def __init__(self, algo_class: Any = None):
        super().__init__(algo_class or APPO)
        self.clip_param = 0.4
        self.use_kl_loss = False
        self.kl_coeff = 1.0
        self.kl_target = 0.01


def stack_fragments(fragments: list[dict]) -> dict[str, np.ndarray]:
    """Fragments of equal length T side by side: [T, sum of their envs, ...]."""
    return {k: np.concatenate([f["batch"][k] for f in fragments], axis=1) for k in KEYS}


class IMPALALearner(Learner):
    clipped = False

    def update(self, batch: dict[str, np.ndarray], **_: Any) -> dict:
        cfg = self.config
        horizon, n = batch["rewards"].shape
        flat = {k: v.reshape((horizon * n,) + v.shape[2:]) for k, v in batch.items()}
        t = to_tensors(flat)
        discrete = hasattr(self.action_space, "n")
        params = list(self.module.parameters())
        metrics: dict[str, float] = {}
        for _ in range(cfg.num_epochs):
            out = self.module(t["obs"].float())
            dist = TorchDist(out["action_dist_inputs"], discrete)
            logp = dist.logp(t["actions"])
            values = out["vf_preds"]
            with torch.no_grad():
                next_v = self.module(t["next_obs"].float())["vf_preds"]
                next_v = next_v * (1 - t["terminateds"].float())
            dones = batch["terminateds"] | batch["truncateds"]
            vs, pg_adv = vtrace(
                batch["action_logp"], logp.detach().numpy().reshape(horizon, n),
                batch["rewards"], values.detach().numpy().reshape(horizon, n),
                next_v.numpy().reshape(horizon, n), dones, cfg.gamma,
                cfg.vtrace_clip_rho_threshold, 1.0, cfg.vtrace_clip_pg_rho_threshold)
            vs_t = torch.from_numpy(vs.reshape(-1))
            adv = torch.from_numpy(pg_adv.reshape(-1))
            if self.clipped:
                policy_loss = -ppo_surrogate(logp, t["action_logp"], adv, cfg.clip_param).mean()
            else:
                policy_loss = -(logp * adv).mean()
            vf_loss = 0.5 * ((vs_t - values) ** 2).mean()
            entropy = dist.entropy().mean()
            total = policy_loss + cfg.vf_loss_coeff * vf_loss - cfg.entropy_coeff * entropy
            norm = self.apply_gradients(total, self.optimizer, params)
            metrics = {"total_loss": float(total.detach()), "policy_loss": float(
                policy_loss.detach()), "vf_loss": float(vf_loss.detach()),
                "entropy": float(entropy.detach()),
                "gradients_default_optimizer_global_norm": norm}
        self.version += 1
        return {"default_policy": metrics,
                "__all_modules__": {"num_env_steps_trained": horizon * n}}


class APPOLearner(IMPALALearner):
    clipped = True


class IMPALA(PPO):
    config_class = IMPALAConfig
    learner_class = IMPALALearner

    @staticmethod
    def postprocess_fragment(module, fragment, config, carry):
        return fragment

    def training_step(self) -> dict:
        cfg = self.config
        want = cfg.train_batch_size_per_learner * self.learner_group.size
        fragments: list[dict] = []
        rows = 0
        while rows < want:
            with self._timer("env_runner_sampling_timer"):
                got = self.env_runner_group.sample_async_ready(
                    num_steps=cfg.get_rollout_fragment_length(), explore=cfg.explore)
            for f in got:
                self.record_fragment(f)
                rows += f["num_env_steps"]
            fragments.extend(got)
        batch = stack_fragments(fragments)
        with self._timer("learner_update_timer"):
            results = self.learner_group.update(batch)
        self._counters["num_env_steps_trained_lifetime"] += rows
        self._push_weights()
        return results


class APPO(IMPALA):
    config_class = APPOConfig
    learner_class = APPOLearner
