"""Preemption. argv[2] == "first": train 5 iterations straight (lines STRAIGHT), then a second
algorithm of the same seed SIGTERMs the head after 2 iterations (hpcray.on_preempt saves a
checkpoint in the state dir, the job ends); "second": restore it and train to 5. The two
halves must repeat the straight curve."""

import json
import os
import signal
import sys
import time

import hpcray

sys.path.insert(0, sys.argv[1])
from common import cartpole_ppo, curve

mode = sys.argv[2]
hpcray.init()
if mode == "first":
    straight = cartpole_ppo().build_algo()
    for _ in range(5):
        print("STRAIGHT " + json.dumps(curve([straight.train()])[0]), flush=True)
    straight.stop()
algo = cartpole_ppo().build_algo()
resumed = algo.restore_from_preemption() if mode == "second" else False
print("RESUMED", json.dumps(resumed), flush=True)
while algo.iteration < 5:
    result = algo.train()
    print("ITER " + json.dumps(curve([result])[0]), flush=True)
    if mode == "first" and algo.iteration == 2:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # the next train() would wait for the checkpoint; the job ends first
algo.stop()
