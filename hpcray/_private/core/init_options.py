"""``hpcray.init()``'s Ray arguments: each becomes a setting of the job, or is refused with
what hpcray does instead (a warning only where Ray treats the argument as a hint)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from . import py_modules
from .options import check_runtime_env

#: what ``address`` may say: this job (hpcray never connects to another cluster)
LOCAL_ADDRESSES = (None, "auto", "local")

NO_DASHBOARD = ("hpcray has no dashboard (it starts no daemons); see the job with "
                "hpcray.nodes(), hpcray.available_resources() and hpcray.timeline()")


def settings(*, address: str | None = None, object_store_memory: int | None = None,
             local_mode: bool = False, include_dashboard: bool | None = None,
             dashboard_host: str | None = None, job_config: Any = None,
             configure_logging: bool | None = None, logging_level: Any = None,
             runtime_env: dict | None = None, _temp_dir: str | None = None,
             _system_config: dict | None = None) -> tuple[dict[str, Any], list[str]]:
    """(settings for the job's Config, warnings to print) for init()'s Ray arguments; raises
    ValueError for one hpcray cannot carry out, saying what to do instead."""
    overrides: dict[str, Any] = {}
    warnings: list[str] = []
    if address not in LOCAL_ADDRESSES:
        raise ValueError(
            f"init(address={address!r}): hpcray does not connect to a running cluster: the MPI "
            "job is the cluster, started with this script by its launcher (mpiexec -n N, srun, "
            "`hpcray run -n N`, or plain python, which starts one). Drop address (None, "
            "'auto' and 'local' all mean this job)")
    if local_mode:
        raise ValueError(
            "init(local_mode=True): Ray deprecated local mode. To debug, run the tasks on one "
            "worker with init(num_cpus=1) and HPCRAY_EXECUTION=thread (they then run in that "
            "rank's process, one at a time)")
    if object_store_memory is not None:
        if type(object_store_memory) is not int or object_store_memory < 0:
            raise ValueError(f"object_store_memory must be a number of bytes (an int >= 0), "
                             f"got {object_store_memory!r}")
        # objects live in the ranks' memory and node-shared segments, as large as the node
        # allows; what a fixed store size maps to is the freed segments kept for reuse
        overrides["segment_cache"] = object_store_memory
    if include_dashboard or dashboard_host is not None:
        warnings.append(NO_DASHBOARD)
    if job_config is not None:
        raise ValueError("init(job_config=...): hpcray has no JobConfig; pass runtime_env= and "
                         "namespace= to init() itself")
    if configure_logging:
        raise ValueError("init(configure_logging=True): hpcray sets up no Python logging (its "
                         "warnings and errors go to stderr); configure logging in the script, "
                         "or leave configure_logging out")
    if logging_level is not None:
        raise ValueError(
            f"init(logging_level={logging_level!r}): hpcray has no logger to set: its warnings "
            "and errors are printed to stderr, and what tasks print is forwarded to the driver "
            "unless init(log_to_driver=False)")
    if runtime_env is not None:  # ({} too: it stands over HPCRAY_RUNTIME_ENV)
        overrides["runtime_env"] = check_runtime_env(runtime_env, "init()") if runtime_env \
            else {}
    if _temp_dir is not None:
        raise ValueError("init(_temp_dir=...): hpcray writes no session files (no daemons, "
                         "sockets or logs); state kept across requeues goes under "
                         "HPCRAY_STATE_DIR")
    if _system_config:
        raise ValueError("init(_system_config=...): hpcray's settings are HPCRAY_* environment "
                         "variables (docs/configuration.md), read by every rank")
    return overrides, warnings


def runtime_env_of(given: dict | None) -> dict | None:
    """init()'s runtime_env, else HPCRAY_RUNTIME_ENV's (JSON), checked by settings() alike."""
    text = os.environ.get("HPCRAY_RUNTIME_ENV")
    if given is not None or not text:
        return given
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"HPCRAY_RUNTIME_ENV={text!r} is not JSON: {exc}") from None


def num_cpus_under_launcher(num_cpus: int | None, workers: int, cpus_per_rank: float) -> None:
    """Under mpiexec/srun the launcher fixed the ranks: init(num_cpus=N) must agree with them
    (as Ray refuses num_cpus when connecting to a running cluster)."""
    if num_cpus is None or num_cpus == workers * cpus_per_rank:
        return
    raise ValueError(
        f"init(num_cpus={num_cpus}) under an MPI launcher: the launcher started {workers} "
        f"worker rank(s) of {cpus_per_rank:g} CPU(s) (HPCRAY_CPUS_PER_RANK), "
        f"{workers * cpus_per_rank:g} CPUs in all. Start num_cpus + 1 ranks (mpiexec -n, "
        "srun -n; rank 0 is the head), or leave num_cpus out")


def apply_in_process(env: dict) -> None:
    """The job's runtime_env for code that runs in a worker rank's own process (thread
    execution, in_rank=True, GPU tasks): every such task shares it, so it is set once."""
    os.environ.update(env.get("env_vars") or {})
    working_dir = env.get("working_dir")
    if working_dir:
        os.chdir(working_dir)
        if working_dir not in sys.path:
            sys.path.insert(0, working_dir)
    py_modules.apply(env.get("py_modules") or [])
