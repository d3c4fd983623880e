"""MultiAgentEnv (RLlib's API) and the env runner that steps several copies of one, each agent
acting through the policy that policy_mapping_fn gives it."""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle
import numpy as np

from .env_runner import RunnerCalls, derived_seeds, make_env, runner_setup


class MultiAgentEnv:
    """Subclass and implement ``reset(*, seed, options) -> (obs, infos)`` and
    ``step(actions) -> (obs, rewards, terminateds, truncateds, infos)``: dicts keyed by agent
    id, the done dicts with an ``"__all__"`` entry. Agents with an observation act next.
    Set ``possible_agents`` and the ``observation_spaces`` / ``action_spaces`` dicts."""

    def __init__(self):
        self.possible_agents: list = []
        self.agents: list = []
        self.observation_spaces: dict = {}
        self.action_spaces: dict = {}

    def get_observation_space(self, agent_id: Any):
        return self.observation_spaces[agent_id]

    def get_action_space(self, agent_id: Any):
        return self.action_spaces[agent_id]

    def close(self) -> None:
        pass


def policy_spaces(env: MultiAgentEnv, config: Any) -> dict[str, tuple]:
    """(observation space, action space) of each policy, from the first agent mapped to it."""
    spaces: dict[str, tuple] = {}
    for agent in env.possible_agents:
        pid = config.policy_mapping_fn(agent, None)
        spaces.setdefault(pid, (env.get_observation_space(agent), env.get_action_space(agent)))
    missing = sorted(set(config.policy_ids()) - set(spaces))
    if missing:
        raise ValueError(f"no agent of the env maps to policies {missing} (policy_mapping_fn)")
    return spaces


class MultiAgentEnvRunner(RunnerCalls):
    """num_envs copies of a MultiAgentEnv; fragments hold one batch per policy."""

    def __init__(self, config: Any, worker_index: int, generation: int = 0):
        n = runner_setup(self, config, worker_index)
        self.envs = [make_env(config, worker_index, i) for i in range(n)]
        self.num_envs = n
        self.spaces = policy_spaces(self.envs[0], config)
        env_seeds, ss = derived_seeds(config.seed, worker_index, n, generation)
        self.rng = np.random.default_rng(ss)
        self.obs = [env.reset(seed=None if env_seeds is None else env_seeds[i])[0]
                    for i, env in enumerate(self.envs)]
        self.ep_return = np.zeros(n)
        self.ep_len = np.zeros(n, dtype=np.int64)
        self.modules: dict | None = None
        self.weights_version = -1

    def set_weights(self, weights: dict, version: int) -> None:
        if self.modules is None:
            self.modules = {pid: self.algo.build_module(self.config, *self.spaces[pid], seed=None)
                            for pid in self.spaces}
        if version != self.weights_version:
            for pid, w in weights.items():
                self.modules[pid].load_state_dict(w)
                fast = getattr(self.modules[pid], "numpy_forward", None)
                self.modules[pid].fast_forward = fast() if fast is not None else None
            self.weights_version = version

    def sample(self, weights: dict | None = None, version: int = 0, num_steps: int | None = None,
               explore: bool = True, num_episodes: int | None = None,
               options: dict | None = None) -> dict:
        import torch

        if weights is not None:
            self.set_weights(weights, version)
        mapping = self.config.policy_mapping_fn
        trajectories: dict[tuple, dict[str, list]] = {}  # (env, agent) -> open trajectory
        finished: dict[str, list[dict]] = {pid: [] for pid in self.spaces}
        returns, lens = [], []
        steps = agent_steps = 0
        with torch.inference_mode():
            while True:
                by_policy: dict[str, list[tuple]] = {}
                for e, obs in enumerate(self.obs):
                    for agent, o in obs.items():
                        by_policy.setdefault(mapping(agent, None), []).append((e, agent, o))
                actions: dict[int, dict] = {e: {} for e in range(self.num_envs)}
                for pid, rows in by_policy.items():
                    obs_batch = np.stack([np.asarray(r[2], dtype=np.float32) for r in rows])
                    env_a, batch_a, extras = self.algo.sample_actions(
                        self.modules[pid], obs_batch, self.rng, explore, self.spaces[pid][1],
                        options or {})
                    for i, (e, agent, o) in enumerate(rows):
                        actions[e][agent] = env_a[i].item() if env_a[i].ndim == 0 else env_a[i]
                        traj = trajectories.setdefault((e, agent), {"pid": pid})
                        step = {"obs": obs_batch[i], "actions": batch_a[i],
                                **{k: v[i] for k, v in extras.items()}}
                        for k, v in step.items():
                            traj.setdefault(k, []).append(v)
                for e, env in enumerate(self.envs):
                    obs, rew, term, trunc, _ = env.step(actions[e])
                    for agent in actions[e]:
                        traj = trajectories[(e, agent)]
                        r = float(rew.get(agent, 0.0))
                        done_t = bool(term.get(agent, False) or term.get("__all__", False))
                        done_tr = bool(trunc.get(agent, False) or trunc.get("__all__", False))
                        traj.setdefault("rewards", []).append(r)
                        traj.setdefault("terminateds", []).append(done_t)
                        traj.setdefault("truncateds", []).append(done_tr and not done_t)
                        nxt = obs.get(agent, traj["obs"][-1])
                        traj.setdefault("next_obs", []).append(np.asarray(nxt, np.float32))
                        self.ep_return[e] += r
                        agent_steps += 1
                        if done_t or done_tr:
                            finished[traj["pid"]].append(trajectories.pop((e, agent)))
                    self.ep_len[e] += 1
                    if term.get("__all__", False) or trunc.get("__all__", False):
                        returns.append(float(self.ep_return[e]))
                        lens.append(int(self.ep_len[e]))
                        self.ep_return[e], self.ep_len[e] = 0.0, 0
                        for key in [k for k in trajectories if k[0] == e]:
                            traj = trajectories.pop(key)
                            traj["truncateds"][-1] = not traj["terminateds"][-1]
                            finished[traj["pid"]].append(traj)
                        obs, _ = env.reset()
                    self.obs[e] = obs
                steps += 1
                if num_episodes is not None and len(returns) >= num_episodes:
                    break
                if num_steps is not None and steps >= num_steps:
                    break
        for traj in trajectories.values():  # fragment ends: cut, bootstrapped from next_obs
            traj["truncateds"][-1] = not traj["terminateds"][-1] or traj["truncateds"][-1]
            finished[traj["pid"]].append(traj)
        fragment = {"policies": {pid: [{k: (np.asarray(v) if k != "pid" else v)
                                        for k, v in t.items()} for t in ts]
                                 for pid, ts in finished.items()},
                    "episode_returns": returns, "episode_lens": lens,
                    "num_env_steps": steps * self.num_envs, "num_agent_steps": agent_steps,
                    "worker_index": self.worker_index}
        if num_episodes is None:
            with torch.inference_mode():
                fragment = self.algo.postprocess_multi_agent(self.modules, fragment, self.config)
        return fragment

    def get_state(self) -> bytes:
        return cloudpickle.dumps({"envs": self.envs, "rng": self.rng.bit_generator.state,
                                  "obs": self.obs, "ret": self.ep_return, "len": self.ep_len})

    def set_state(self, blob: bytes) -> None:
        state = pickle.loads(blob)
        self.envs, self.obs = state["envs"], state["obs"]
        self.rng.bit_generator.state = state["rng"]
        self.ep_return, self.ep_len = state["ret"], state["len"]

    def stop(self) -> None:
        for env in self.envs:
            env.close()
