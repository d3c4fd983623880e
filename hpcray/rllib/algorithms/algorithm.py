"""Algorithm: RLlib's train/evaluate/checkpoint driver, also a ``tune.Trainable``."""

from __future__ import annotations

import datetime
import os
import pickle
import platform
import tempfile
import threading
import time
import weakref
from typing import Any

import cloudpickle
import numpy as np

import hpcray
from hpcray import tune
from hpcray.tune.storage import flatten

from ..core.learner_group import LearnerGroup
from ..core.rl_module import build_module, save_modules
from ..env.env_runner import EnvRunner
from ..env.env_runner_group import EnvRunnerGroup, runner_class
from .algorithm_config import AlgorithmConfig

STATE_FILE = "algorithm_state.pkl"
LEARNER_FILE = "learner_state.pt"


def _episode_stats(returns: list[float], lens: list[int]) -> dict:
    """Mean, max, min return and mean length of a list of episodes (NaN for none)."""
    if not returns:
        return {"episode_return_mean": float("nan"), "episode_return_max": float("nan"),
                "episode_return_min": float("nan"), "episode_len_mean": float("nan")}
    return {"episode_return_mean": float(np.mean(returns)),
            "episode_return_max": float(np.max(returns)),
            "episode_return_min": float(np.min(returns)),
            "episode_len_mean": float(np.mean(lens))}


class Algorithm(tune.Trainable):
    """Base class of PPO, DQN, SAC, APPO: ``train()`` runs one ``training_step()``.

    Subclasses set ``config_class``, ``learner_class``, ``default_module_class`` and implement
    ``training_step()``, ``sample_actions`` and ``postprocess_fragment``.
    """

    config_class: type[AlgorithmConfig] = AlgorithmConfig
    learner_class: type = None
    default_module_class: type = None

    def __init__(self, config: AlgorithmConfig | dict | None = None, env: Any = None,
                 **_: Any):
        tune.Trainable.__init__(self, {})
        if env is not None:
            config = (config or self.get_default_config()).copy()
            config.env = env
        self.setup(config)

    @classmethod
    def get_default_config(cls) -> AlgorithmConfig:
        return cls.config_class(cls)

    @classmethod
    def default_resource_request(cls, config: AlgorithmConfig | dict) -> list[dict]:
        """What one Tune trial of this algorithm holds, as Ray's bundle list: the trial's own
        CPU (the algorithm and its local learner), then one bundle per env runner and per
        learner actor. A setting given as a search space counts at its default."""
        default = cls.get_default_config()

        def get(key: str) -> Any:
            value = config.get(key, None) if hasattr(config, "get") else None
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            return value if number else getattr(default, key)

        gpus = get("num_gpus_per_learner")
        runners = [{"CPU": get("num_cpus_per_env_runner")}] * int(get("num_env_runners"))
        learners = [{"CPU": get("num_cpus_per_learner"), "GPU": gpus}] * int(get("num_learners"))
        return [{"CPU": 1, "GPU": 0 if learners else gpus}, *runners, *learners]

    # -- policy hooks used by the env runners --------------------------------------------------
    @classmethod
    def build_module(cls, config: AlgorithmConfig, observation_space, action_space,
                     seed: int | None):
        return build_module(config.rl_module_spec, cls.default_module_class, observation_space,
                            action_space, config.model_config, seed)

    @staticmethod
    def sample_actions(module, obs: np.ndarray, rng: np.random.Generator, explore: bool,
                       action_space, options: dict) -> tuple[np.ndarray, np.ndarray, dict]:
        raise NotImplementedError

    @staticmethod
    def postprocess_fragment(module, fragment: dict, config: AlgorithmConfig,
                             carry: dict) -> dict:
        """Runs on the env runner; carry is the runner's dict kept from call to call."""
        return fragment

    # -- set-up --------------------------------------------------------------------------------
    def setup(self, config: AlgorithmConfig | dict) -> None:
        if not isinstance(config, AlgorithmConfig):
            config = self.get_default_config().update_from_dict(dict(config or {}))
        if config.algo_class is not type(self) and not isinstance(self, config.algo_class):
            config = config.copy()
            config.algo_class = type(self)
        config.validate()
        config.env_creator()
        self.config = config
        self.iteration = getattr(self, "iteration", 0)
        self._stopped = False
        self._busy = threading.Lock()  # a preemption checkpoint waits for the iteration
        self._timers: dict[str, float] = {}
        self._counters = {"num_env_steps_sampled_lifetime": 0, "num_episodes_lifetime": 0,
                          "num_env_steps_trained_lifetime": 0, "num_agent_steps_sampled_lifetime": 0}
        self._episodes: dict[int, list[tuple[float, int]]] = {}  # runner -> this iteration's
        self._last_stats = _episode_stats([], [])
        self._time_total = 0.0
        self._since_restore = 0
        self.env_runner_group = EnvRunnerGroup(config)
        probe = self.env_runner_group.local or runner_class(config)(config, 0)
        if config.is_multi_agent:
            self._obs_space, self._act_space = probe.spaces, None
        else:
            self._obs_space = probe.single_observation_space
            self._act_space = probe.single_action_space
        if probe is not self.env_runner_group.local:
            probe.stop()
        self.learner_group = LearnerGroup(config, self._obs_space, self._act_space)
        self._eval_runner: EnvRunner | None = None
        self._local_runner: EnvRunner | None = None
        self._weights_version = 0
        self._push_weights()
        self.setup_algorithm()
        self._register_preemption()

    def setup_algorithm(self) -> None:
        """Algorithm-specific state (replay buffers, schedules)."""

    @property
    def env_runner(self) -> EnvRunner:
        """The local env runner: the sampling one with num_env_runners=0; with remote runners,
        one made here on first access (as RLlib's local runner, it holds the current weights
        but does not sample for training)."""
        if self.env_runner_group.local is not None:
            return self.env_runner_group.local
        if self._local_runner is None:
            self._local_runner = runner_class(self.config)(self.config, 0)
        self._local_runner.set_weights(self.learner_group.call("get_weights"),
                                       self._weights_version)
        return self._local_runner

    def get_module(self, module_id: str = "default_policy"):
        """A copy of the trained module (torch) of policy module_id, on this process."""
        return self._modules([module_id])[module_id]

    def _modules(self, module_ids: list[str] | None = None) -> dict:
        """Copies of the trained modules, by id (every policy's by default)."""
        weights = self.learner_group.call("get_weights")
        modules = {}
        for mid in module_ids or self.config.policy_ids():
            if self.config.is_multi_agent:
                if mid not in self._obs_space:
                    raise ValueError(f"no module {mid!r}; modules: {sorted(self._obs_space)}")
                module = self.build_module(self.config, *self._obs_space[mid], None)
                module.load_state_dict(weights[mid])
            else:
                if mid != "default_policy":
                    raise ValueError(f"a single-agent algorithm has one module, "
                                     f"'default_policy', not {mid!r}")
                module = self.build_module(self.config, self._obs_space, self._act_space, None)
                module.load_state_dict(weights)
            modules[mid] = module.eval()
        return modules

    def _push_weights(self) -> None:
        self._weights_version += 1
        with self._timer("synch_weights"):
            self.env_runner_group.sync_weights(self.learner_group.call("get_weights"),
                                               self._weights_version)

    def _timer(self, name: str):
        algo = self

        class _T:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                algo._timers[name] = algo._timers.get(name, 0.0) + time.perf_counter() - self.t

        return _T()

    # -- sampling helpers --------------------------------------------------------------------
    def sample_fragments(self, **kwargs: Any) -> list[dict]:
        kwargs.setdefault("num_steps", self.config.get_rollout_fragment_length())
        kwargs.setdefault("explore", self.config.explore)
        with self._timer("env_runner_sampling_timer"):
            fragments = self.env_runner_group.sample(**kwargs)
        for f in fragments:
            self.record_fragment(f)
        return fragments

    def record_fragment(self, fragment: dict) -> None:
        self._counters["num_env_steps_sampled_lifetime"] += fragment["num_env_steps"]
        self._counters["num_agent_steps_sampled_lifetime"] += fragment.get(
            "num_agent_steps", fragment["num_env_steps"])
        self._counters["num_episodes_lifetime"] += len(fragment["episode_returns"])
        self._iter_steps += fragment["num_env_steps"]
        self._iter_episodes += len(fragment["episode_returns"])
        self._episodes.setdefault(fragment.get("worker_index", 0), []).extend(
            zip(fragment["episode_returns"], fragment["episode_lens"]))

    def _runner_stats(self) -> dict:
        """RLlib 2.60's episode metrics: each runner's mean over the episodes it finished in
        this iteration (its last ceil(metrics_num_episodes_for_smoothing / num_env_runners)),
        averaged over the runners; the previous iteration's values if none finished."""
        keep = -(-self.config.metrics_num_episodes_for_smoothing
                 // max(1, self.config.num_env_runners))
        per_runner = [eps[-keep:] for eps in self._episodes.values() if eps]
        self._episodes = {}
        if not per_runner:
            return dict(self._last_stats)
        stats = [_episode_stats([r for r, _ in eps], [n for _, n in eps]) for eps in per_runner]
        self._last_stats = {
            "episode_return_mean": float(np.mean([s["episode_return_mean"] for s in stats])),
            "episode_return_max": max(s["episode_return_max"] for s in stats),
            "episode_return_min": min(s["episode_return_min"] for s in stats),
            "episode_len_mean": float(np.mean([s["episode_len_mean"] for s in stats]))}
        return dict(self._last_stats)

    # -- training ------------------------------------------------------------------------------
    def training_step(self) -> dict:
        raise NotImplementedError

    def step(self) -> dict:
        """One iteration: training_step(), evaluation when due; RLlib's result dict (plus its
        keys flattened, "env_runners/episode_return_mean", for Tune's metric lookup)."""
        with self._busy:
            result = self._train_once()
        return {**result, **flatten(result)}

    def _train_once(self) -> dict:
        if self._stopped:
            raise RuntimeError("this algorithm was stopped; build a new one")
        start = time.perf_counter()
        self._timers = {}
        self._iter_steps = 0
        self._iter_episodes = 0
        learner_results: dict = {}
        calls = 0
        min_steps = self.config.min_sample_timesteps_per_iteration or 0
        min_time = self.config.min_time_s_per_iteration or 0.0
        while True:
            learner_results = self.training_step() or learner_results
            calls += 1
            if (self._iter_steps >= min_steps
                    and time.perf_counter() - start >= min_time):
                break
        it_time = time.perf_counter() - start
        self._time_total += it_time
        c = self._counters
        result: dict[str, Any] = {
            "env_runners": {**self._runner_stats(),
                            "num_episodes": self._iter_episodes,
                            "num_env_steps_sampled": self._iter_steps,
                            "num_env_steps_sampled_lifetime": c["num_env_steps_sampled_lifetime"],
                            "num_episodes_lifetime": c["num_episodes_lifetime"]},
            "learners": learner_results,
            "num_env_steps_sampled_lifetime": c["num_env_steps_sampled_lifetime"],
            "num_agent_steps_sampled_lifetime": c["num_agent_steps_sampled_lifetime"],
            "num_episodes_lifetime": c["num_episodes_lifetime"],
            "num_env_steps_trained_lifetime": c["num_env_steps_trained_lifetime"],
            "num_training_step_calls_per_iteration": calls,
            "fault_tolerance": {"num_healthy_workers": self.env_runner_group.num_healthy(),
                                "num_remote_worker_restarts": self.env_runner_group.num_restarts,
                                "num_dropped_fragments": self.env_runner_group.num_dropped},
            "timers": {**self._timers, "training_iteration": it_time,
                       "training_step": it_time},
            "time_this_iter_s": it_time,
            "time_total_s": self._time_total,
            "training_iteration": self.iteration + 1,
        }
        interval = self.config.evaluation_interval
        if interval and (self.iteration + 1) % interval == 0:
            result["evaluation"] = self.evaluate()
        return result

    def train(self) -> dict:
        """One training iteration; returns RLlib's nested result dict, with the keys Ray's
        Trainable.train() fills in (config, date, timestamp, pid, hostname, done, ...)."""
        with self._busy:
            result = self._train_once()
            self.iteration += 1
        now = datetime.datetime.now()
        self._since_restore += 1
        result.update({
            "config": self.config.to_dict(), "date": now.strftime("%Y-%m-%d_%H-%M-%S"),
            "timestamp": int(now.timestamp()), "pid": os.getpid(),
            "hostname": platform.node(), "done": False,
            "iterations_since_restore": self._since_restore})
        return result

    def evaluate(self) -> dict:
        """evaluation_duration episodes (or env steps) without exploration, in this process."""
        cfg = self.config
        if self._eval_runner is None:
            eval_config = cfg.copy()
            eval_config.update_from_dict(cfg.evaluation_config or {})
            eval_config.num_envs_per_env_runner = 1
            self._eval_runner = runner_class(eval_config)(eval_config, 10_000)
        weights = self.learner_group.call("get_weights")
        explore = bool((cfg.evaluation_config or {}).get("explore", False))
        by_steps = cfg.evaluation_duration_unit == "timesteps"
        n = int(cfg.evaluation_duration)
        out = self._eval_runner.sample(weights, self._weights_version,
                                       num_steps=n if by_steps else None,
                                       num_episodes=None if by_steps else n, explore=explore)
        stats = _episode_stats(out["episode_returns"], out["episode_lens"])
        stats["num_episodes"] = len(out["episode_returns"])
        stats["num_env_steps_sampled"] = out["num_env_steps"]
        return {"env_runners": stats}

    # -- checkpoints ---------------------------------------------------------------------------
    def get_state(self) -> dict:
        return {"config": self.config, "iteration": self.iteration, "counters": self._counters,
                "last_stats": self._last_stats,
                "time_total": self._time_total, "weights_version": self._weights_version,
                "runners": self.env_runner_group.get_states(),
                "algorithm": self.get_algorithm_state(), "class": type(self)}

    def get_algorithm_state(self) -> dict:
        return {}

    def set_algorithm_state(self, state: dict) -> None:
        pass

    def save_to_path(self, path: str | None = None, **_: Any) -> str:
        """Writes a checkpoint directory (the config, counters, learner and runner states)."""
        path = os.path.abspath(path or tempfile.mkdtemp(prefix="hpcray_rllib_"))
        os.makedirs(path, exist_ok=True)
        blob = self.learner_group.call("get_state")
        for name, data in ((LEARNER_FILE, blob),
                           (STATE_FILE, cloudpickle.dumps(self.get_state()))):
            tmp = os.path.join(path, name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(path, name))
        save_modules(path, self._modules())
        return path

    save = save_to_path

    def restore_from_path(self, path: str, **_: Any) -> None:
        """Loads a checkpoint into this algorithm. Its config is kept (a different
        num_env_runners or num_learners is fine); runner states come back when the counts match."""
        with open(os.path.join(path, STATE_FILE), "rb") as f:
            state = pickle.load(f)
        with open(os.path.join(path, LEARNER_FILE), "rb") as f:
            blob = f.read()
        self.learner_group.call_all("set_state", blob)
        self.iteration = state["iteration"]
        self._counters = dict(state["counters"])
        self._last_stats = dict(state["last_stats"])
        self._episodes = {}
        self._time_total = state["time_total"]
        self._since_restore = 0
        self._weights_version = state["weights_version"]
        same = (state["config"].num_envs_per_env_runner == self.config.num_envs_per_env_runner
                and self.env_runner_group.set_states(state["runners"]))
        if not same:  # fresh runners seeded for this point of the run, not the run's start
            self.env_runner_group.stop()
            self.env_runner_group = EnvRunnerGroup(self.config, generation=self.iteration)
        self.set_algorithm_state(state["algorithm"])
        self._weights_version -= 1
        self._push_weights()

    restore = restore_from_path

    @classmethod
    def from_checkpoint(cls, path: str, **_: Any) -> Algorithm:
        """A new algorithm built from the config saved in the checkpoint, then restored."""
        with open(os.path.join(path, STATE_FILE), "rb") as f:
            state = pickle.load(f)
        algo = state["class"](config=state["config"])
        algo.restore_from_path(path)
        return algo

    # Trainable checkpoint hooks: Tune (and PBT's exploit) go through save/restore_from_path.
    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self.save_to_path(checkpoint_dir)

    def load_checkpoint(self, checkpoint: dict | str) -> None:
        self.restore_from_path(checkpoint)

    # -- preemption and shutdown ---------------------------------------------------------------
    def preemption_checkpoint_dir(self) -> str:
        """Where a preempted job's algorithm saves itself (kept across Slurm requeues)."""
        base = hpcray.get_runtime_context().get_state_dir()
        return os.path.join(base, "rllib", type(self).__name__)

    def restore_from_preemption(self) -> bool:
        """Restores the checkpoint a preempted run of this job saved, if any (call it right
        after build_algo() in a script Slurm may requeue); True if one was restored."""
        path = self.preemption_checkpoint_dir()
        if not os.path.exists(os.path.join(path, STATE_FILE)):
            return False
        self.restore_from_path(path)
        return True

    def _register_preemption(self) -> None:
        if not hpcray.is_initialized():
            return  # no job here, or inside a Tune trial (the sweep handles preemption)
        ref = weakref.ref(self)

        def _save_on_preempt() -> None:
            algo = ref()
            if algo is None or algo._stopped:
                return
            algo._busy.acquire()  # after the running iteration; kept: no iteration follows
            path = algo.save_to_path(algo.preemption_checkpoint_dir())
            print(f"hpcray.rllib: preempted after iteration {algo.iteration}, checkpoint "
                  f"saved to {path}", flush=True)

        hpcray.on_preempt(_save_on_preempt)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.env_runner_group.stop()
        self.learner_group.stop()
        for runner in (self._eval_runner, self._local_runner):
            if runner is not None:
                runner.stop()

    def cleanup(self) -> None:
        self.stop()
