"""A sweep on 2 worker ranks in which one trial's process dies (os._exit), ``after`` its
first report or ``before`` it. Prints DYING-RESULT <json> once fit() returned."""

from __future__ import annotations

import json
import os
import sys
import time

import hpcray
from hpcray import tune

WHEN = sys.argv[1]                      # "after" or "before"
MAX_FAILURES = int(sys.argv[2])         # FailureConfig(max_failures=...)
hpcray.init()


def train(config):
    marker = os.path.join(tune.get_trial_dir(), "died-once")
    dies = config["k"] == 0 and not os.path.exists(marker)
    for i in range(1, 5):
        if dies and (WHEN == "before" or i == 2):
            open(marker, "w").close()
            os._exit(7)                 # the whole process, as a segfault or the OOM killer would
        time.sleep(0.2)
        tune.report({"score": config["k"] * 10 + i})


grid = tune.Tuner(
    train, param_space={"k": tune.grid_search([0, 1, 2])},
    tune_config=tune.TuneConfig(metric="score", mode="max"),
    run_config=tune.RunConfig(storage_path=os.path.abspath("results"), name=WHEN, verbose=0,
                              failure_config=tune.FailureConfig(max_failures=MAX_FAILURES)),
).fit()
rows = sorted((r.config["k"], r.metrics.get("training_iteration") if r.metrics else None,
               "process died" in str(r.error) if r.error else None) for r in grid)
print("DYING-RESULT " + json.dumps({"rows": rows, "errors": grid.num_errors,
                                    "cpus": hpcray.cluster_resources().get("CPU", 0)}),
      flush=True)
