"""Multi-agent PPO: two CartPoles as two agents of one MultiAgentEnv, each with its own policy;
both policies learn, and the episode return is the sum over the agents."""

import sys

import gymnasium as gym

import hpcray
from hpcray.rllib import MultiAgentEnv
from hpcray.rllib.algorithms.ppo import PPOConfig

sys.path.insert(0, sys.argv[1])
from common import emit


class TwoCartPoles(MultiAgentEnv):
    """Agent i balances its own pole; the episode ends when both are done."""

    def __init__(self, config=None):
        super().__init__()
        self.possible_agents = ["a0", "a1"]
        self.envs = {a: gym.make("CartPole-v1") for a in self.possible_agents}
        self.observation_spaces = {a: e.observation_space for a, e in self.envs.items()}
        self.action_spaces = {a: e.action_space for a, e in self.envs.items()}

    def reset(self, *, seed=None, options=None):
        self.agents = list(self.possible_agents)
        obs = {}
        for i, (a, env) in enumerate(self.envs.items()):
            obs[a] = env.reset(seed=None if seed is None else seed + i)[0]
        return obs, {}

    def step(self, actions):
        obs, rew, term, trunc = {}, {}, {}, {}
        for a, action in actions.items():
            o, r, te, tr, _ = self.envs[a].step(action)
            rew[a], term[a], trunc[a] = r, te, tr
            if te or tr:
                self.agents.remove(a)
            else:
                obs[a] = o
        term["__all__"] = not self.agents
        trunc["__all__"] = False
        return obs, rew, term, trunc, {}


hpcray.init()
algo = (PPOConfig().environment(TwoCartPoles)
        .env_runners(num_env_runners=2, num_envs_per_env_runner=2)
        .multi_agent(policies={"p0", "p1"},
                     policy_mapping_fn=lambda agent_id, episode, **kw: "p" + agent_id[1])
        .training(lr=3e-4, train_batch_size_per_learner=2000, minibatch_size=250, num_epochs=8)
        .rl_module(model_config={"fcnet_hiddens": [64, 64]})
        .debugging(seed=5).build_algo())
results = [algo.train() for _ in range(10)]
emit({"returns": [r["env_runners"]["episode_return_mean"] for r in results],
      "policies": sorted(results[-1]["learners"]),
      "agent_steps": results[-1]["num_agent_steps_sampled_lifetime"],
      "env_steps": results[-1]["num_env_steps_sampled_lifetime"]})
algo.stop()
