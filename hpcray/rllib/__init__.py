"""hpcray.rllib: RLlib's new-API-stack algorithms on hpcray (env runners as actors, learners
over hpcray.collective). Needs the ``rllib`` extra (gymnasium, torch)."""

from .algorithms.algorithm import Algorithm
from .algorithms.algorithm_config import AlgorithmConfig
from .core.rl_module import RLModuleSpec
from .env.env_runner import EnvContext, register_env
from .env.multi_agent_env import MultiAgentEnv

__all__ = ["Algorithm", "AlgorithmConfig", "EnvContext", "MultiAgentEnv", "RLModuleSpec", "register_env"]
