"""RLlib's algorithms: PPO, APPO/IMPALA, DQN, SAC (new API stack names)."""

from .algorithm import Algorithm
from .algorithm_config import AlgorithmConfig, NotProvided

__all__ = ["Algorithm", "AlgorithmConfig", "NotProvided"]
