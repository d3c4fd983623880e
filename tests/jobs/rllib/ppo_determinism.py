"""The same seed and runner count give the same curve twice; another seed another curve."""

import sys

import hpcray

sys.path.insert(0, sys.argv[1])
from common import cartpole_ppo, curve, emit

hpcray.init()
curves = []
for seed in (11, 11, 12):
    algo = cartpole_ppo(seed=seed).build_algo()
    curves.append(curve([algo.train() for _ in range(2)]))
    algo.stop()
emit({"curves": curves})
