"""Torch RL modules: the default fully connected networks of each algorithm, and RLModuleSpec
to bring your own ``torch.nn.Module``.

A module is built as ``module_class(observation_space, action_space, model_config)``. What its
``forward(obs)`` returns depends on the algorithm (a dict of tensors):

- PPO, APPO, IMPALA: ``{"action_dist_inputs": logits (Discrete) or [mean, log_std] (Box),
  "vf_preds": [B]}``;
- DQN: ``{"q_values": [B, num_actions]}``;
- SAC: a module with ``pi(obs) -> [mean, log_std]`` and ``q(obs, actions) -> (q1, q2)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU,
               "elu": nn.ELU, "linear": nn.Identity, None: nn.Identity}


@dataclass
class RLModuleSpec:
    """Which module class to build and its model_config (RLlib's RLModuleSpec)."""

    module_class: type | None = None
    model_config: dict = field(default_factory=dict)
    observation_space: Any = None
    action_space: Any = None


#: Where a checkpoint keeps its trained modules: RLlib's component path, so
#: ``RLModule.from_checkpoint(Path(ckpt) / "learner_group" / "learner" / "rl_module")`` works.
RL_MODULE_DIR = os.path.join("learner_group", "learner", "rl_module")
MODULES_FILE = "modules.pkl"


class RLModule(nn.Module):
    """Base of the default modules: RLlib's inference calls and state, and the checkpoint
    reader. ``forward(obs)`` is the one method a module implements."""

    def forward_inference(self, batch: dict) -> dict[str, torch.Tensor]:
        """forward() of batch["obs"] without gradients (RLlib's greedy path)."""
        with torch.no_grad():
            return self.forward(torch.as_tensor(batch["obs"], dtype=torch.float32))

    def forward_exploration(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.forward_inference(batch)

    def forward_train(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.forward(torch.as_tensor(batch["obs"], dtype=torch.float32))

    def get_state(self) -> dict[str, np.ndarray]:
        """The weights as numpy arrays, by parameter name."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()}

    def set_state(self, state: dict) -> None:
        self.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})

    @staticmethod
    def from_checkpoint(path: str | os.PathLike) -> dict[str, nn.Module]:
        """The trained modules of an algorithm checkpoint, by module id ("default_policy"):
        path is the checkpoint or its learner_group/learner/rl_module folder."""
        path = Path(path)
        if not (path / MODULES_FILE).exists() and (path / RL_MODULE_DIR / MODULES_FILE).exists():
            path = path / RL_MODULE_DIR
        if not (path / MODULES_FILE).exists():
            raise FileNotFoundError(f"no saved modules at {path}: pass a checkpoint folder "
                                    f"written by Algorithm.save_to_path or its {RL_MODULE_DIR}")
        with open(path / MODULES_FILE, "rb") as f:
            return cloudpickle.load(f)


def save_modules(path: str, modules: dict[str, nn.Module]) -> None:
    """Writes modules (id -> module) under path/RL_MODULE_DIR for RLModule.from_checkpoint."""
    folder = os.path.join(path, RL_MODULE_DIR)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, MODULES_FILE + ".tmp")
    with open(tmp, "wb") as f:
        cloudpickle.dump(modules, f)
    os.replace(tmp, os.path.join(folder, MODULES_FILE))


def mlp(sizes: list[int], activation: str | None, out_gain: float = 1.0) -> nn.Sequential:
    """Linear layers of sizes[i] -> sizes[i+1] with the activation between them."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"fcnet_activation {activation!r} is not one of "
                         f"{sorted(k for k in ACTIVATIONS if k)}")
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else np.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


_NP_ACTIVATIONS = {nn.Tanh: np.tanh, nn.ReLU: lambda x: np.maximum(x, 0.0),
                   nn.Identity: lambda x: x}


def numpy_mlp(seq: nn.Sequential) -> Callable[[np.ndarray], np.ndarray] | None:
    """The same function as seq in numpy (float32), or None if seq has other layer kinds.

    Env runners step small batches, where numpy's per-call cost is a fraction of torch's."""
    layers = []
    for layer in seq:
        if isinstance(layer, nn.Linear):
            layers.append((layer.weight.detach().numpy().T.copy(),
                           layer.bias.detach().numpy().copy()))
        elif type(layer) in _NP_ACTIVATIONS:
            layers.append(_NP_ACTIVATIONS[type(layer)])
        else:
            return None

    def forward(x: np.ndarray) -> np.ndarray:
        for layer in layers:
            x = x @ layer[0] + layer[1] if isinstance(layer, tuple) else layer(x)
        return x

    return forward


def obs_dim(space) -> int:
    return int(np.prod(space.shape))


def num_action_outputs(space) -> int:
    """Logits for Discrete, mean and log_std for Box."""
    if hasattr(space, "n"):
        return int(space.n)
    return 2 * int(np.prod(space.shape))


def hidden(model_config: dict, default: list[int]) -> list[int]:
    return list(model_config.get("fcnet_hiddens", default))


class PPOTorchRLModule(RLModule):
    """Separate policy and value networks (``vf_share_layers=False``, RLlib's default)."""

    def __init__(self, observation_space, action_space, model_config: dict):
        super().__init__()
        sizes = hidden(model_config, [256, 256])
        act = model_config.get("fcnet_activation", "tanh")
        d = obs_dim(observation_space)
        self.share = bool(model_config.get("vf_share_layers", False))
        self.pi = mlp([d, *sizes, num_action_outputs(action_space)], act, 0.01)
        self.vf = mlp([d, *sizes, 1], act, 1.0)
        if self.share:
            self.vf = nn.Linear(sizes[-1], 1)

    def numpy_forward(self) -> Callable[[np.ndarray], dict] | None:
        """forward() in numpy with the current weights (None where it cannot be)."""
        pi, vf = numpy_mlp(self.pi), numpy_mlp(self.vf)
        if self.share or pi is None or vf is None:
            return None

        def forward(obs: np.ndarray) -> dict[str, np.ndarray]:
            obs = obs.reshape(obs.shape[0], -1)
            return {"action_dist_inputs": pi(obs), "vf_preds": vf(obs)[:, 0]}

        return forward

    def forward(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        obs = obs.reshape(obs.shape[0], -1)
        if self.share:
            features = self.pi[:-1](obs)
            return {"action_dist_inputs": self.pi[-1](features),
                    "vf_preds": self.vf(features).squeeze(-1)}
        return {"action_dist_inputs": self.pi(obs), "vf_preds": self.vf(obs).squeeze(-1)}


class DQNTorchRLModule(RLModule):
    """Q network; ``dueling=True`` splits it into value and advantage streams."""

    def __init__(self, observation_space, action_space, model_config: dict):
        super().__init__()
        sizes = hidden(model_config, [256])
        act = model_config.get("fcnet_activation", "relu")
        d, n = obs_dim(observation_space), int(action_space.n)
        self.dueling = bool(model_config.get("dueling", True))
        if self.dueling:
            self.encoder = mlp([d, *sizes], act)
            self.encoder.append(ACTIVATIONS[act]())
            self.value = mlp([sizes[-1], 1], None)
            self.advantage = mlp([sizes[-1], n], None)
        else:
            self.q = mlp([d, *sizes, n], act)

    def numpy_forward(self) -> Callable[[np.ndarray], dict] | None:
        """forward() in numpy with the current weights (None where it cannot be)."""
        if not self.dueling:
            q = numpy_mlp(self.q)
            return None if q is None else (
                lambda obs: {"q_values": q(obs.reshape(obs.shape[0], -1))})
        enc, val, adv = numpy_mlp(self.encoder), numpy_mlp(self.value), numpy_mlp(self.advantage)
        if enc is None or val is None or adv is None:
            return None

        def forward(obs: np.ndarray) -> dict[str, np.ndarray]:
            z = enc(obs.reshape(obs.shape[0], -1))
            a = adv(z)
            return {"q_values": val(z) + a - a.mean(axis=-1, keepdims=True)}

        return forward

    def forward(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        obs = obs.reshape(obs.shape[0], -1)
        if not self.dueling:
            return {"q_values": self.q(obs)}
        z = self.encoder(obs)
        adv = self.advantage(z)
        return {"q_values": self.value(z) + adv - adv.mean(dim=-1, keepdim=True)}


class SACTorchRLModule(RLModule):
    """Squashed Gaussian policy and twin Q networks (their targets live in the learner)."""

    def __init__(self, observation_space, action_space, model_config: dict):
        super().__init__()
        sizes = hidden(model_config, [256, 256])
        act = model_config.get("fcnet_activation", "relu")
        d, a = obs_dim(observation_space), int(np.prod(action_space.shape))
        self.policy = mlp([d, *sizes, 2 * a], act, 0.01)
        self.q1 = mlp([d + a, *sizes, 1], act)
        self.q2 = mlp([d + a, *sizes, 1], act)

    def pi(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(obs.reshape(obs.shape[0], -1))

    def q(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs.reshape(obs.shape[0], -1), actions], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def forward(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"action_dist_inputs": self.pi(obs)}


def build_module(spec: RLModuleSpec | None, default_class: type, observation_space, action_space,
                 model_config: dict, seed: int | None) -> nn.Module:
    """The module of spec (or default_class), initialised from seed when one is given."""
    cls = spec.module_class if spec is not None and spec.module_class else default_class
    config = {**model_config, **(spec.model_config if spec is not None else {})}
    if seed is not None:
        torch.manual_seed(seed)
    return cls(observation_space, action_space, config)


# -- action distributions (numpy on the env runners, torch in the learners) -----------------

def np_log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_sample(inputs: np.ndarray, discrete: bool, rng: np.random.Generator,
              explore: bool) -> tuple[np.ndarray, np.ndarray]:
    """(actions, their log-probabilities) from distribution inputs, batched."""
    if discrete:
        logp_all = np_log_softmax(inputs.astype(np.float64))
        if explore:
            cdf = np.cumsum(np.exp(logp_all), axis=-1)
            u = rng.random((len(inputs), 1)) * cdf[:, -1:]
            actions = np.minimum((cdf <= u).sum(axis=-1), inputs.shape[-1] - 1)
        else:
            actions = logp_all.argmax(axis=-1)
        return actions, logp_all[np.arange(len(actions)), actions].astype(np.float32)
    mean, log_std = np.split(inputs.astype(np.float64), 2, axis=-1)
    noise = rng.standard_normal(mean.shape) if explore else np.zeros_like(mean)
    actions = mean + np.exp(log_std) * noise
    logp = (-0.5 * noise ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
    return actions.astype(np.float32), logp.astype(np.float32)


class TorchDist:
    """Categorical (logits) or diagonal Gaussian ([mean, log_std]) over a batch."""

    def __init__(self, inputs: torch.Tensor, discrete: bool):
        self.discrete = discrete
        if discrete:
            self.logp_all = torch.log_softmax(inputs, dim=-1)
        else:
            self.mean, self.log_std = torch.chunk(inputs, 2, dim=-1)

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return self.logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        z = (actions - self.mean) / torch.exp(self.log_std)
        return (-0.5 * z ** 2 - self.log_std - 0.5 * np.log(2 * np.pi)).sum(-1)

    def entropy(self) -> torch.Tensor:
        if self.discrete:
            return -(self.logp_all.exp() * self.logp_all).sum(-1)
        return (self.log_std + 0.5 * np.log(2 * np.pi * np.e)).sum(-1)

    def kl(self, other: TorchDist) -> torch.Tensor:
        """KL(self || other)."""
        if self.discrete:
            return (self.logp_all.exp() * (self.logp_all - other.logp_all)).sum(-1)
        var, ovar = torch.exp(2 * self.log_std), torch.exp(2 * other.log_std)
        return (other.log_std - self.log_std
                + (var + (self.mean - other.mean) ** 2) / (2 * ovar) - 0.5).sum(-1)
