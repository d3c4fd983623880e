"""PPO: GAE on the env runners, the clipped surrogate with value clipping, entropy and an
adaptive KL term on the learners."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core.learner import Learner, to_tensors
from ...core.rl_module import PPOTorchRLModule, TorchDist, np_sample
from ...utils.postprocessing import compute_gae
from ..algorithm import Algorithm
from ..algorithm_config import AlgorithmConfig

TRAIN_KEYS = ("obs", "actions", "action_logp", "action_dist_inputs", "advantages",
              "value_targets", "vf_preds")
LOSS_KEYS = ("total_loss", "policy_loss", "vf_loss", "vf_loss_unclipped", "vf_explained_var",
             "entropy", "mean_kl_loss")


class PPOConfig(AlgorithmConfig):
    """RLlib's PPO defaults (new API stack)."""

    def __init__(self, algo_class: Any = None):
        super().__init__(algo_class or PPO)
        self.lr = 5e-5
        self.train_batch_size_per_learner = 4000
        self.minibatch_size = 128
        self.num_epochs = 30
        self.lambda_ = 1.0
        self.use_critic = True
        self.use_gae = True
        self.use_kl_loss = True
        self.kl_coeff = 0.2
        self.kl_target = 0.01
        self.vf_loss_coeff = 1.0
        self.entropy_coeff = 0.0
        self.clip_param = 0.3
        self.vf_clip_param = 10.0
        self.model_config = {"fcnet_hiddens": [256, 256], "fcnet_activation": "tanh"}


def ppo_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                  clip_param: float) -> torch.Tensor:
    """Per-sample clipped surrogate objective (to maximise)."""
    ratio = torch.exp(logp - old_logp)
    return torch.minimum(advantages * ratio,
                         advantages * torch.clamp(ratio, 1 - clip_param, 1 + clip_param))


def ppo_losses(config: Any, dist: TorchDist, old_dist: TorchDist, vf: torch.Tensor,
               batch: dict[str, torch.Tensor], kl_coeff: float) -> dict[str, torch.Tensor]:
    """RLlib's PPO loss terms; ``total_loss`` is the one to minimise."""
    logp = dist.logp(batch["actions"])
    surrogate = ppo_surrogate(logp, batch["action_logp"], batch["advantages"], config.clip_param)
    entropy = dist.entropy().mean()
    mean_kl = old_dist.kl(dist).mean() if config.use_kl_loss else torch.zeros(())
    vf_err = (vf - batch["value_targets"]) ** 2
    vf_clipped = torch.clamp(vf_err, 0, config.vf_clip_param)
    total = (-surrogate.mean() + config.vf_loss_coeff * vf_clipped.mean()
             - config.entropy_coeff * entropy)
    if config.use_kl_loss:
        total = total + kl_coeff * mean_kl
    var = torch.var(batch["value_targets"])
    explained = 1 - torch.var(batch["value_targets"] - vf) / var if var > 0 else torch.zeros(())
    return {"total_loss": total, "policy_loss": -surrogate.mean(), "vf_loss": vf_clipped.mean(),
            "vf_loss_unclipped": vf_err.mean(), "vf_explained_var": explained,
            "entropy": entropy, "mean_kl_loss": mean_kl}


def update_kl_coeff(kl_coeff: float, mean_kl: float, kl_target: float) -> float:
    """RLlib's adaptive KL coefficient."""
    if mean_kl > 2.0 * kl_target:
        return kl_coeff * 1.5
    if mean_kl < 0.5 * kl_target:
        return kl_coeff * 0.5
    return kl_coeff


class PPOLearner(Learner):
    def build(self) -> None:
        super().build()
        self.kl_coeff = float(self.config.kl_coeff)
        self.discrete = hasattr(self.action_space, "n")

    def update(self, batch: dict[str, np.ndarray], **_: Any) -> dict:
        cfg = self.config
        adv = batch["advantages"]
        batch = {**batch, "advantages": ((adv - adv.mean()) / max(1e-4, adv.std()))
                 .astype(np.float32)}
        params = list(self.module.parameters())
        sums: dict[str, float] = {}
        count = 0
        for idx in self.minibatches(len(batch["obs"]), cfg.minibatch_size, cfg.num_epochs):
            mb = to_tensors(batch, idx)
            out = self.module(mb["obs"])
            dist = TorchDist(out["action_dist_inputs"], self.discrete)
            old = TorchDist(mb["action_dist_inputs"], self.discrete)
            losses = ppo_losses(cfg, dist, old, out["vf_preds"], mb, self.kl_coeff)
            norm = self.apply_gradients(losses["total_loss"], self.optimizer, params)
            for k in LOSS_KEYS:
                sums[k] = sums.get(k, 0.0) + float(losses[k].detach())
            sums["gradients_default_optimizer_global_norm"] = (
                sums.get("gradients_default_optimizer_global_norm", 0.0) + norm)
            count += 1
        metrics = {k: v / max(1, count) for k, v in sums.items()}
        if cfg.use_kl_loss:
            self.kl_coeff = update_kl_coeff(self.kl_coeff, metrics["mean_kl_loss"], cfg.kl_target)
        metrics["curr_kl_coeff"] = self.kl_coeff
        metrics["num_module_steps_trained"] = count * min(len(batch["obs"]),
                                                          cfg.minibatch_size or len(batch["obs"]))
        self.version += 1
        return {"default_policy": metrics,
                "__all_modules__": {"num_env_steps_trained": len(batch["obs"]),
                                    "num_non_trainable_parameters": 0,
                                    "num_trainable_parameters": int(sum(
                                        p.numel() for p in params))}}

    def extra_state(self) -> dict:
        return {"kl_coeff": self.kl_coeff}

    def set_extra_state(self, state: dict) -> None:
        self.kl_coeff = state.get("kl_coeff", self.kl_coeff)


def flat_fragments(fragments: list[dict], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """[T, N, ...] columns of several fragments as one [sum T*N, ...] batch."""
    return {k: np.concatenate([f["batch"][k].reshape((-1,) + f["batch"][k].shape[2:])
                               for f in fragments]) for k in keys}


class PPO(Algorithm):
    config_class = PPOConfig
    learner_class = PPOLearner
    default_module_class = PPOTorchRLModule

    @staticmethod
    def sample_actions(module, obs, rng, explore, action_space, options):
        obs = np.asarray(obs, dtype=np.float32)
        fast = getattr(module, "fast_forward", None)
        out = fast(obs) if fast is not None else {
            k: v.numpy() for k, v in module(torch.from_numpy(obs)).items()}
        inputs = out["action_dist_inputs"]
        actions, logp = np_sample(inputs, hasattr(action_space, "n"), rng, explore)
        env_actions = actions
        if not hasattr(action_space, "n"):
            env_actions = np.clip(actions, action_space.low, action_space.high)
        return env_actions, actions, {"action_logp": logp, "action_dist_inputs": inputs,
                                      "vf_preds": out["vf_preds"]}

    @staticmethod
    def postprocess_fragment(module, fragment, config, carry):
        b = fragment["batch"]
        horizon, n = b["rewards"].shape
        next_obs = torch.from_numpy(b["next_obs"].reshape((horizon * n,) + b["obs"].shape[2:])
                                    .astype(np.float32))
        next_v = module(next_obs)["vf_preds"].numpy().reshape(horizon, n)
        next_v = next_v * (1.0 - b["terminateds"])
        dones = b["terminateds"] | b["truncateds"]
        b["advantages"], b["value_targets"] = compute_gae(
            b["rewards"], b["vf_preds"], next_v.astype(np.float32), dones, config.gamma,
            config.lambda_)
        del b["next_obs"]
        return fragment

    @staticmethod
    def postprocess_multi_agent(modules, fragment, config):
        """GAE along each agent's own trajectory; one flat batch per policy."""
        out = {}
        for pid, trajectories in fragment.pop("policies").items():
            cols: dict[str, list] = {k: [] for k in TRAIN_KEYS}
            for t in trajectories:
                next_v = modules[pid](torch.from_numpy(t["next_obs"]))["vf_preds"].numpy()
                next_v = next_v * (1.0 - t["terminateds"])
                dones = t["terminateds"] | t["truncateds"]
                adv, targets = compute_gae(
                    t["rewards"][:, None].astype(np.float32), t["vf_preds"][:, None],
                    next_v[:, None].astype(np.float32), dones[:, None], config.gamma,
                    config.lambda_)
                t = {**t, "advantages": adv[:, 0], "value_targets": targets[:, 0]}
                for k in TRAIN_KEYS:
                    cols[k].append(t[k])
            out[pid] = {k: np.concatenate(v) if v else np.zeros(0, np.float32)
                        for k, v in cols.items()}
        fragment["batch_by_policy"] = out
        return fragment

    def training_step(self) -> dict:
        fragments = self.sample_fragments()
        if self.config.is_multi_agent:
            batch = {pid: {k: np.concatenate([f["batch_by_policy"][pid][k] for f in fragments])
                           for k in TRAIN_KEYS} for pid in self.config.policy_ids()}
            rows = sum(len(b["obs"]) for b in batch.values())
        else:
            batch = flat_fragments(fragments, TRAIN_KEYS)
            rows = len(batch["obs"])
        with self._timer("learner_update_timer"):
            results = self.learner_group.update(batch)
        self._counters["num_env_steps_trained_lifetime"] += rows
        self._push_weights()
        return results
