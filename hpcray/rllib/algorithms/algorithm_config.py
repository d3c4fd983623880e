"""AlgorithmConfig: RLlib's builder of algorithm settings (new API stack names)."""

from __future__ import annotations

import copy as _copy
from collections.abc import Callable
from typing import Any

from ..core.rl_module import RLModuleSpec
from ..env.env_runner import resolve_env_creator


class _NotProvided:
    def __repr__(self) -> str:
        return "NotProvided"


NotProvided = _NotProvided()

_SECTIONS = {
    "environment": ("env", "env_config", "observation_space", "action_space", "clip_rewards",
                    "normalize_actions", "clip_actions", "disable_env_checking"),
    "env_runners": ("num_env_runners", "num_envs_per_env_runner", "rollout_fragment_length",
                    "explore", "num_cpus_per_env_runner", "sample_timeout_s",
                    "batch_mode", "create_env_on_local_worker", "gym_env_vectorize_mode"),
    "learners": ("num_learners", "num_gpus_per_learner", "num_cpus_per_learner"),
    "evaluation": ("evaluation_interval", "evaluation_duration", "evaluation_duration_unit",
                   "evaluation_num_env_runners", "evaluation_config",
                   "evaluation_parallel_to_training"),
    "debugging": ("seed", "log_level", "logger_config"),
    "fault_tolerance": ("restart_failed_env_runners", "max_num_env_runner_restarts",
                        "ignore_env_runner_failures", "restart_failed_sub_environments"),
    "reporting": ("metrics_num_episodes_for_smoothing", "min_sample_timesteps_per_iteration",
                  "min_time_s_per_iteration", "keep_per_episode_custom_metrics"),
    "multi_agent": ("policies", "policy_mapping_fn", "policies_to_train"),
    "checkpointing": ("export_native_model_files", "checkpoint_trainable_policies_only"),
}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001 - values that cannot be compared count as changed
        return False


class AlgorithmConfig:
    """Settings of an algorithm, set through chained builder methods.

    ``PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=2).training(lr=3e-4)``
    then ``.build_algo()``. Unknown settings raise ``TypeError`` naming the known ones.
    """

    algo_class: Any = None

    def __init__(self, algo_class: Any = None):
        if algo_class is not None:
            self.algo_class = algo_class
        # environment
        self.env: Any = None
        self.env_config: dict = {}
        self.observation_space = None
        self.action_space = None
        self.clip_rewards = None
        self.normalize_actions = True
        self.clip_actions = False
        self.disable_env_checking = False
        # env runners
        self.num_env_runners = 0
        self.num_envs_per_env_runner = 1
        self.rollout_fragment_length: int | str = "auto"
        self.explore = True
        self.num_cpus_per_env_runner = 1
        self.sample_timeout_s = 60.0
        self.batch_mode = "truncate_episodes"
        self.create_env_on_local_worker = False
        self.gym_env_vectorize_mode = "SYNC"
        # learners
        self.num_learners = 0
        self.num_gpus_per_learner = 0
        self.num_cpus_per_learner = 1
        # training
        self.gamma = 0.99
        self.lr = 0.001
        self.grad_clip: float | None = None
        self.grad_clip_by = "global_norm"
        self.train_batch_size_per_learner = 32
        self.minibatch_size: int | None = None
        self.num_epochs = 1
        self.optimizer: dict = {}
        # rl module
        self.model_config: dict = {}
        self.rl_module_spec: RLModuleSpec | None = None
        # evaluation
        self.evaluation_interval: int | None = None
        self.evaluation_duration = 10
        self.evaluation_duration_unit = "episodes"
        self.evaluation_num_env_runners = 0
        self.evaluation_config: dict | None = None
        self.evaluation_parallel_to_training = False
        # debugging, fault tolerance, reporting
        self.seed: int | None = None
        self.log_level = "WARN"
        self.logger_config = None
        self.restart_failed_env_runners = True
        self.max_num_env_runner_restarts = 1000
        self.ignore_env_runner_failures = False
        self.restart_failed_sub_environments = False
        self.metrics_num_episodes_for_smoothing = 100
        self.min_sample_timesteps_per_iteration = 0
        self.min_time_s_per_iteration = None
        self.keep_per_episode_custom_metrics = False
        # multi-agent
        self.policies: Any = None
        self.policy_mapping_fn: Callable | None = None
        self.policies_to_train = None
        self.export_native_model_files = False
        self.checkpoint_trainable_policies_only = False

    # -- builder methods ---------------------------------------------------------------------
    def _set(self, section: str, keys: tuple | None, kwargs: dict) -> AlgorithmConfig:
        for key, value in kwargs.items():
            if value is NotProvided:
                continue
            known = keys if keys is not None else self._training_keys()
            if key not in known:
                raise TypeError(f"{type(self).__name__}.{section}() got an unknown setting "
                                f"{key!r}; known: {sorted(known)}")
            setattr(self, key, value)
        return self

    def _training_keys(self) -> set[str]:
        other = {k for keys in _SECTIONS.values() for k in keys}
        return {k for k in vars(self) if k not in other and k not in (
            "model_config", "rl_module_spec")}

    def environment(self, env: Any = NotProvided, *, env_config: dict = NotProvided,
                    **kwargs: Any) -> AlgorithmConfig:
        """A gymnasium id, a name registered with register_env, an env class or a creator."""
        return self._set("environment", _SECTIONS["environment"],
                         {"env": env, "env_config": env_config, **kwargs})

    def env_runners(self, **kwargs: Any) -> AlgorithmConfig:
        """num_env_runners (0: sample in this process), num_envs_per_env_runner,
        rollout_fragment_length ("auto" or steps per env), explore, num_cpus_per_env_runner."""
        return self._set("env_runners", _SECTIONS["env_runners"], kwargs)

    def learners(self, **kwargs: Any) -> AlgorithmConfig:
        """num_learners (0: one learner in this process; n: n actors allreducing gradients)."""
        return self._set("learners", _SECTIONS["learners"], kwargs)

    def training(self, **kwargs: Any) -> AlgorithmConfig:
        """lr, gamma, train_batch_size_per_learner, minibatch_size, num_epochs, grad_clip and the
        algorithm's own options (e.g. PPO's clip_param)."""
        return self._set("training", None, kwargs)

    def rl_module(self, *, model_config: dict = NotProvided,
                  rl_module_spec: RLModuleSpec = NotProvided) -> AlgorithmConfig:
        """model_config ({"fcnet_hiddens": [64, 64], "fcnet_activation": "tanh"}), or a spec
        with your own torch module class."""
        if model_config is not NotProvided:
            self.model_config = dict(model_config)
        if rl_module_spec is not NotProvided:
            self.rl_module_spec = rl_module_spec
        return self

    def evaluation(self, **kwargs: Any) -> AlgorithmConfig:
        return self._set("evaluation", _SECTIONS["evaluation"], kwargs)

    def debugging(self, **kwargs: Any) -> AlgorithmConfig:
        """seed: every (runner, env) pair gets its own seed derived from it."""
        return self._set("debugging", _SECTIONS["debugging"], kwargs)

    def fault_tolerance(self, **kwargs: Any) -> AlgorithmConfig:
        return self._set("fault_tolerance", _SECTIONS["fault_tolerance"], kwargs)

    def reporting(self, **kwargs: Any) -> AlgorithmConfig:
        return self._set("reporting", _SECTIONS["reporting"], kwargs)

    def checkpointing(self, **kwargs: Any) -> AlgorithmConfig:
        return self._set("checkpointing", _SECTIONS["checkpointing"], kwargs)

    def multi_agent(self, **kwargs: Any) -> AlgorithmConfig:
        """policies (a set of ids or a dict id -> spec), policy_mapping_fn(agent_id, episode)."""
        return self._set("multi_agent", _SECTIONS["multi_agent"], kwargs)

    def framework(self, framework: str = "torch", **_: Any) -> AlgorithmConfig:
        if framework != "torch":
            raise ValueError(f"hpcray.rllib runs torch modules only, got framework={framework!r}")
        return self

    def api_stack(self, **_: Any) -> AlgorithmConfig:
        """Accepted for compatibility: hpcray.rllib only has the new API stack."""
        return self

    def resources(self, **_: Any) -> AlgorithmConfig:
        """Accepted for compatibility; set learners(num_gpus_per_learner=...) instead."""
        return self

    # -- dict views --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {k: _copy.copy(v) for k, v in vars(self).items() if not k.startswith("_")}

    def update_from_dict(self, config: dict) -> AlgorithmConfig:
        known = set(vars(self))
        for key, value in config.items():
            if key == "model" and isinstance(value, dict):
                key = "model_config"
            if key not in known:
                raise TypeError(f"{type(self).__name__} has no setting {key!r}")
            setattr(self, key, value)
        return self

    @classmethod
    def from_dict(cls, config: dict) -> AlgorithmConfig:
        return cls().update_from_dict(config)

    def copy(self, copy_frozen: bool | None = None) -> AlgorithmConfig:
        return _copy.deepcopy(self)

    def keys(self):
        """The settings that differ from the algorithm's defaults: ``dict(config)`` (what
        ``Tuner(param_space=config)`` takes) is short, and ``update_from_dict`` of it on a
        default config gives this config back."""
        return self._changed().keys()

    def items(self):
        return self._changed().items()

    def _changed(self) -> dict:
        base = type(self)().to_dict()
        mine = self.to_dict()
        return {k: v for k, v in mine.items() if k not in base or not _same(base[k], v)}

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in vars(self)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    # -- derived values ----------------------------------------------------------------------
    @property
    def is_multi_agent(self) -> bool:
        return self.policies is not None

    def policy_ids(self) -> list[str]:
        return sorted(self.policies) if self.policies is not None else ["default_policy"]

    def env_creator(self) -> Callable:
        """The env creator, resolved once where the config was built (so names registered in
        the driver work on every rank)."""
        if getattr(self, "_creator", None) is None or self._creator[0] is not self.env:
            self._creator = (self.env, resolve_env_creator(self.env))
        return self._creator[1]

    def get_rollout_fragment_length(self) -> int:
        """Steps per env per sample call: "auto" splits train_batch_size_per_learner (times
        the learners) over every env of every runner."""
        if self.rollout_fragment_length != "auto":
            return int(self.rollout_fragment_length)
        envs = max(1, self.num_env_runners) * self.num_envs_per_env_runner
        total = self.train_batch_size_per_learner * max(1, self.num_learners)
        return max(1, -(-total // envs))

    def validate(self) -> None:
        if self.env is None:
            raise ValueError("no environment: call .environment('CartPole-v1') (a gymnasium id, "
                             "a register_env name, or an env class)")
        for key in ("num_env_runners", "num_learners"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise ValueError(f"{key} must be an int >= 0, got {getattr(self, key)!r}")
        if self.num_envs_per_env_runner < 1:
            raise ValueError("num_envs_per_env_runner must be >= 1")
        if self.is_multi_agent:
            if self.policy_mapping_fn is None:
                if len(self.policies) != 1:
                    raise ValueError("several policies need a policy_mapping_fn(agent_id, "
                                     "episode, **kwargs) in .multi_agent()")
                only = next(iter(self.policies))
                self.policy_mapping_fn = lambda agent_id, episode, **kw: only
            if self.num_learners > 1:
                raise ValueError("multi-agent runs take num_learners 0 or 1 in hpcray.rllib")

    def build_algo(self, env: Any = None, **_: Any):
        """The algorithm of this config (a copy of it: later changes do not reach it)."""
        if self.algo_class is None:
            raise TypeError("a plain AlgorithmConfig has no algorithm: use PPOConfig(), "
                            "DQNConfig(), SACConfig() or APPOConfig()")
        config = self.copy()
        if env is not None:
            config.env = env
        return self.algo_class(config=config)

    build = build_algo

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"
