"""An env that raises in runner 1: the runner is replaced, its fragment dropped, the run
goes on (restart_failed_env_runners)."""

import os
import sys
import tempfile

import gymnasium as gym
import numpy as np

import hpcray
from hpcray.tune import register_env

sys.path.insert(0, sys.argv[1])
from common import cartpole_ppo, emit

MARK = os.path.join(tempfile.mkdtemp(), "crashed")


class Flaky(gym.Wrapper):
    """CartPole whose runner 1 raises once, at its 30th step."""

    def __init__(self, ctx):
        super().__init__(gym.make("CartPole-v1"))
        self.crash = ctx.worker_index == 1 and ctx.vector_index == 0
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.crash and self.steps == 30 and not os.path.exists(ctx_mark()):
            open(ctx_mark(), "w").close()
            raise RuntimeError("the simulator fell over")
        return self.env.step(action)


def ctx_mark():
    return MARK


hpcray.init()
register_env("flaky", Flaky)
algo = cartpole_ppo().environment("flaky").build_algo()
results = [algo.train() for _ in range(3)]
learned = algo.get_module().get_state()
states = algo.env_runner_group.foreach_env_runner(lambda runner: runner.module.get_state())
emit({"ids": algo.env_runner_group.foreach_env_runner_with_id(lambda i, runner: i),
      "runner_weights_current": [sorted(s) == sorted(learned) and all(
          np.array_equal(s[k], learned[k]) for k in learned) for s in states],
      "local_weights_current": all(np.array_equal(algo.env_runner.module.get_state()[k], v)
                                   for k, v in learned.items()),"restarts": [r["fault_tolerance"]["num_remote_worker_restarts"] for r in results],
      "healthy": results[-1]["fault_tolerance"]["num_healthy_workers"],
      "steps": [r["env_runners"]["num_env_steps_sampled"] for r in results],
      "crashed": os.path.exists(MARK)})
algo.stop()
