from .appo import APPO, IMPALA, APPOConfig, APPOLearner, IMPALAConfig, IMPALALearner

__all__ = ["APPO", "IMPALA", "APPOConfig", "APPOLearner", "IMPALAConfig", "IMPALALearner"]
