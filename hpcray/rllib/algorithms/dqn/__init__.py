from .dqn import DQN, DQNConfig, DQNLearner

__all__ = ["DQN", "DQNConfig", "DQNLearner"]
