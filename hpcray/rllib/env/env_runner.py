"""EnvRunner: a gymnasium vector of environments with the policy in the loop.

Plain Python (no MPI): the algorithm runs it in-process (``num_env_runners=0``) or as actors
(one per rank). ``sample`` returns one fragment of ``[T, num_envs]`` arrays and the episodes that
ended in it.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np

from hpcray.tune import registry


class EnvContext(dict):
    """The env_config handed to env creators, with the runner's and env's indices."""

    def __init__(self, env_config: dict, worker_index: int = 0, num_workers: int = 0,
                 vector_index: int = 0):
        super().__init__(env_config)
        self.worker_index, self.num_workers, self.vector_index = (
            worker_index, num_workers, vector_index)


def resolve_env_creator(env: Any) -> Callable[[EnvContext], Any]:
    """A creator for a registered name, a gymnasium id, an env class or a creator function."""
    import gymnasium as gym

    if isinstance(env, str):
        if registry.contains_env(env):
            return registry.get_env_creator(env)
        try:
            gym.spec(env)
        except gym.error.Error as exc:
            raise ValueError(f"environment {env!r} is neither registered with "
                             f"tune.register_env(name, creator) (registered: "
                             f"{registry.registered_envs()}) nor a gymnasium id ({exc})") from None
        return lambda ctx: gym.make(env, **dict(ctx))
    if callable(env):
        return env
    raise TypeError(f"environment must be a gymnasium id, a registered name, an env class or "
                    f"a creator function, got {type(env).__name__}")


def derived_seeds(seed: int | None, runner_index: int, num_envs: int, generation: int = 0
                  ) -> tuple[list[int] | None, np.random.SeedSequence]:
    """Per-env reset seeds and the runner's own seed sequence, all distinct per runner index."""
    if seed is None:
        return None, np.random.SeedSequence()
    ss = np.random.SeedSequence([int(seed), runner_index, generation])
    env_seeds = ss.generate_state(num_envs, dtype=np.uint32).tolist()
    return [int(s) for s in env_seeds], ss.spawn(1)[0]


def runner_setup(runner: Any, config: Any, worker_index: int) -> int:
    """What every kind of env runner does first (one torch thread: runners share the rank's
    cores); returns how many environments it steps."""
    import torch

    torch.set_num_threads(1)
    runner.config = config
    runner.algo = config.algo_class
    runner.worker_index = worker_index
    return int(config.num_envs_per_env_runner)


def make_env(config: Any, worker_index: int, vector_index: int) -> Any:
    """Environment vector_index of runner worker_index, made by the config's env creator."""
    return config.env_creator()(EnvContext(config.env_config, worker_index,
                                           config.num_env_runners, vector_index))


class RunnerCalls:
    """What the group calls on every kind of env runner, besides sampling."""

    worker_index: int

    def ping(self) -> int:
        return self.worker_index

    def apply(self, func: Callable[[Any], Any], weights: dict | None = None,
              version: int = 0) -> Any:
        """func(this runner), after loading the newest weights (EnvRunnerGroup.foreach_env_runner)."""
        if weights is not None:
            self.set_weights(weights, version)
        return func(self)


class EnvRunner(RunnerCalls):
    """Steps num_envs environments of one runner; the algorithm class supplies the policy."""

    def __init__(self, config: Any, worker_index: int, generation: int = 0):
        import gymnasium as gym

        n = runner_setup(self, config, worker_index)
        fns = [(lambda i=i: make_env(config, worker_index, i)) for i in range(n)]
        self.env = gym.vector.SyncVectorEnv(
            fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.num_envs = n
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        env_seeds, ss = derived_seeds(config.seed, worker_index, n, generation)
        self.rng = np.random.default_rng(ss)
        self.obs, _ = self.env.reset(seed=env_seeds)
        self.ep_return = np.zeros(n)
        self.ep_len = np.zeros(n, dtype=np.int64)
        self.module = None
        self.weights_version = -1
        self.carry: dict = {}  # what postprocessing holds back for the next fragment

    def set_weights(self, weights: dict, version: int) -> None:
        if self.module is None:
            self.module = self.algo.build_module(self.config, self.single_observation_space,
                                                 self.single_action_space, seed=None)
            self.module.eval()
        if version != self.weights_version:
            self.module.load_state_dict(weights)
            self.weights_version = version
            fast = getattr(self.module, "numpy_forward", None)
            self.module.fast_forward = fast() if fast is not None else None

    def sample(self, weights: dict | None = None, version: int = 0, num_steps: int | None = None,
               explore: bool = True, num_episodes: int | None = None,
               options: dict | None = None) -> dict:
        """Steps every env num_steps times (or until num_episodes end); returns a fragment."""
        import torch

        if weights is not None:
            self.set_weights(weights, version)
        options = options or {}
        start = time.perf_counter()
        cols: dict[str, list] = {}
        returns, lens = [], []
        steps = 0
        with torch.inference_mode():
            while True:
                obs = self.obs
                env_actions, batch_actions, extras = self.algo.sample_actions(
                    self.module, obs, self.rng, explore, self.single_action_space, options)
                next_obs, rewards, terms, truncs, infos = self.env.step(env_actions)
                dones = terms | truncs
                true_next = next_obs
                if dones.any():
                    true_next = next_obs.copy()
                    final = infos["final_obs"]
                    for i in np.flatnonzero(dones):
                        true_next[i] = final[i]
                self.ep_return += rewards
                self.ep_len += 1
                for i in np.flatnonzero(dones):
                    returns.append(float(self.ep_return[i]))
                    lens.append(int(self.ep_len[i]))
                self.ep_return[dones] = 0.0
                self.ep_len[dones] = 0
                step = {"obs": obs, "actions": batch_actions, "rewards": rewards,
                        "terminateds": terms, "truncateds": truncs, "next_obs": true_next,
                        **extras}
                for key, value in step.items():
                    cols.setdefault(key, []).append(value)
                self.obs = next_obs
                steps += 1
                if num_episodes is not None and len(returns) >= num_episodes:
                    break
                if num_steps is not None and steps >= num_steps:
                    break
        batch = {k: np.stack(v) for k, v in cols.items()}
        batch["rewards"] = batch["rewards"].astype(np.float32)
        fragment = {"batch": batch, "episode_returns": returns, "episode_lens": lens,
                    "num_env_steps": steps * self.num_envs}
        if num_episodes is None:
            with torch.inference_mode():
                fragment = self.algo.postprocess_fragment(self.module, fragment, self.config,
                                                          self.carry)
        fragment["sample_s"] = time.perf_counter() - start
        fragment["worker_index"] = self.worker_index
        return fragment

    def get_state(self) -> bytes:
        return cloudpickle.dumps({"env": self.env, "rng": self.rng.bit_generator.state, "obs": self.obs,
                             "ret": self.ep_return, "len": self.ep_len, "carry": self.carry})

    def set_state(self, blob: bytes) -> None:
        state = pickle.loads(blob)
        self.env.close()
        self.env, self.obs = state["env"], state["obs"]
        self.rng.bit_generator.state = state["rng"]
        self.ep_return, self.ep_len = state["ret"], state["len"]
        self.carry = state["carry"]

    def stop(self) -> None:
        self.env.close()
