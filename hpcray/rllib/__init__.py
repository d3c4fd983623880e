"""hpcray.rllib: RLlib's new-API-stack algorithms on hpcray (env runners as actors, learners
over hpcray.collective). Needs the ``rllib`` extra (gymnasium, torch)."""

try:
    import gymnasium  # noqa: F401
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"hpcray.rllib needs gymnasium and torch ({exc}): pip install "
                      f"'hpcray[rllib]' (CPU torch: pip install torch --index-url "
                      f"https://download.pytorch.org/whl/cpu)") from exc

from hpcray.tune.registry import register_env

from .algorithms.algorithm import Algorithm
from .algorithms.algorithm_config import AlgorithmConfig
from .core.rl_module import RLModuleSpec
from .env.env_runner import EnvContext
from .env.multi_agent_env import MultiAgentEnv

__all__ = ["Algorithm", "AlgorithmConfig", "EnvContext", "MultiAgentEnv", "RLModuleSpec", "register_env"]
