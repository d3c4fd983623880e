from .sac import SAC, SACConfig, SACLearner

__all__ = ["SAC", "SACConfig", "SACLearner"]
