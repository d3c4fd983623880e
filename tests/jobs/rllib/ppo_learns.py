"""PPO learns CartPole-v1 to a mean return of 450 with 2 env runners, within 80 iterations."""

import sys

import hpcray

sys.path.insert(0, sys.argv[1])
from common import cartpole_ppo, emit

hpcray.init()
algo = cartpole_ppo().evaluation(evaluation_duration=5).build_algo()
returns = []
for _ in range(80):
    result = algo.train()
    returns.append(result["env_runners"]["episode_return_mean"])
    if returns[-1] >= 450:
        break
evaluation = algo.evaluate()
emit({"returns": returns, "eval": evaluation["env_runners"]["episode_return_mean"],
      "keys": sorted(result), "learner_keys": sorted(result["learners"]["default_policy"]),
      "timers": sorted(result["timers"]), "runners": sorted(result["env_runners"])})
algo.stop()
