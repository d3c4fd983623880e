"""Two learners in an hpcray.collective group (gradients allreduced): they hold the same
weights after every update, and PPO still learns."""

import sys

import numpy as np

import hpcray

sys.path.insert(0, sys.argv[1])
from common import cartpole_ppo, emit

hpcray.init()
algo = cartpole_ppo(num_env_runners=0).learners(num_learners=2).training(
    train_batch_size_per_learner=1000).build_algo()
returns, same = [], []
for _ in range(12):
    returns.append(algo.train()["env_runners"]["episode_return_mean"])
    w0, w1 = hpcray.get([r.get_weights.remote() for r in algo.learner_group.remote])
    same.append(all(np.array_equal(w0[k].numpy(), w1[k].numpy()) for k in w0))
emit({"returns": returns, "same": same})
algo.stop()
