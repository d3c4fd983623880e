"""init()'s Ray arguments at work (issue 19): the job-wide runtime_env under each task's own,
object_store_memory, Ray's positional address, num_cpus matching the launcher's ranks."""

import os

from jobkit import emit, outcome, settle_output

import hpcray

HERE = os.getcwd()
JOB_ENV = {"env_vars": {"JOB_VAR": "job", "BOTH": "job"},
           "working_dir": os.path.join(HERE, "jobdir"),
           "py_modules": [os.path.join(HERE, "mods", "jobmod.py")]}
FORWARD = os.environ.get("HPCRAY_EXECUTION") != "thread"  # log_to_driver both ways
hpcray.init("auto", num_cpus=2, runtime_env=JOB_ENV, object_store_memory=48 << 20,
            include_dashboard=True, configure_logging=False, local_mode=False,
            resources={"widget": 1.5}, log_to_driver=FORWARD)


def seen():
    """What the calling code sees of a runtime_env."""
    names = []
    for name in ("jobmod", "othermod"):
        try:
            names.append(__import__(name).NAME)
        except ImportError:
            names.append(None)
    return [os.environ.get("JOB_VAR"), os.environ.get("BOTH"), os.environ.get("OWN"),
            os.path.basename(os.getcwd()), *names]


@hpcray.remote
def task():
    return seen()


@hpcray.remote
def nested():
    return hpcray.get(task.remote(), timeout=60)


@hpcray.remote
class Actor:
    def seen(self):
        return seen()


@hpcray.remote
def shout():
    print("walk-marker", flush=True)


@hpcray.remote
def segment_cache():
    return hpcray.get_runtime_context()._rt.config.segment_cache


def get(ref):
    return hpcray.get(ref, timeout=60)


OWN = {"env_vars": {"OWN": "own", "BOTH": "task"}, "working_dir": os.path.join(HERE, "taskdir"),
       "py_modules": [os.path.join(HERE, "mods", "othermod.py")]}
R = {
    "task": outcome(lambda: get(task.remote())),
    "own": outcome(lambda: get(task.options(runtime_env=OWN).remote())),
    "after_own": outcome(lambda: [get(task.remote()) for _ in range(3)]),
    "nested": outcome(lambda: get(nested.remote())),
    "actor": outcome(lambda: get(Actor.remote().seen.remote())),
    "in_rank": outcome(lambda: get(task.options(in_rank=True).remote())),
    "driver": seen(),
    "segment_cache": outcome(lambda: get(segment_cache.remote())),
    "cpus": hpcray.cluster_resources().get("CPU"),
    "widgets": hpcray.cluster_resources().get("widget"),
    "reinit": outcome(lambda: sorted(hpcray.init(ignore_reinit_error=True))),
    "reinit_refused": outcome(lambda: hpcray.init())[:2],
}
get(shout.remote())
settle_output()
emit(R)
