from ..appo.appo import IMPALA, IMPALAConfig, IMPALALearner

__all__ = ["IMPALA", "IMPALAConfig", "IMPALALearner"]
