"""Checkpoint and restore: the curve continues identically on the same runner count, and
the checkpoint restores onto a different one, onto two learners, and through
Algorithm.from_checkpoint."""

import sys
import tempfile

import hpcray
from hpcray.rllib import Algorithm

sys.path.insert(0, sys.argv[1])
from common import cartpole_ppo, curve, emit

hpcray.init()
algo = cartpole_ppo().build_algo()
for _ in range(2):
    algo.train()
path = algo.save_to_path(tempfile.mkdtemp())
straight = curve([algo.train() for _ in range(2)])
algo.stop()

restored = Algorithm.from_checkpoint(path)
again = curve([restored.train() for _ in range(2)])
restored.stop()

one = cartpole_ppo(num_env_runners=1).build_algo()
one.restore_from_path(path)
res = one.train()
fewer = {"iteration": res["training_iteration"],
         "lifetime": res["num_env_steps_sampled_lifetime"],
         "healthy": res["fault_tolerance"]["num_healthy_workers"]}
one.stop()

two = cartpole_ppo(num_env_runners=0).learners(num_learners=2).build_algo()
two.restore_from_path(path)
learners = {"iteration": two.train()["training_iteration"],
            "remote": len(two.learner_group.remote)}
two.stop()
emit({"straight": straight, "again": again, "fewer": fewer, "learners": learners})
