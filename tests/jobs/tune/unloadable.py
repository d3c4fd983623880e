"""A sweep whose trainable cannot be rebuilt on the worker ranks: no runner ever comes up,
so fit() must end with TuneError (not hang, not blame the trials). Prints
UNLOADABLE-RESULT <json>."""

from __future__ import annotations

import json
import os

import hpcray
from hpcray import tune

hpcray.init()


class Unloadable:
    def __call__(self, config):
        tune.report({"score": 1})

    def __reduce__(self):
        return (_rebuild, ())


def _rebuild():
    if hpcray.get_runtime_context().get_rank() != 0:
        raise RuntimeError("cannot load the trainable here")
    return Unloadable()


try:
    tune.Tuner(Unloadable(), param_space={"k": tune.grid_search([0, 1, 2])},
               run_config=tune.RunConfig(storage_path=os.path.abspath("results"),
                                         verbose=0)).fit()
    outcome = ["returned", ""]
except tune.TuneError as exc:
    outcome = [type(exc).__name__, str(exc)]
print("UNLOADABLE-RESULT " + json.dumps(outcome), flush=True)
