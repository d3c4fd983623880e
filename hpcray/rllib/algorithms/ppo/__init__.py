from .ppo import PPO, PPOConfig, PPOLearner

__all__ = ["PPO", "PPOConfig", "PPOLearner"]
