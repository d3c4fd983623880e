"""Every tuning knob, read from ``HPCRAY_*`` environment variables in one place."""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, field, fields


@dataclass
class Config:
    """Runtime settings; each field ``x`` is overridden by the variable ``HPCRAY_X``."""

    #: largest serialized value (bytes) that travels inside control messages
    inline_max: int = 100 * 1024
    #: longest idle sleep of a progress loop, in seconds
    backoff_max: float = 0.001
    #: how long a progress loop keeps polling without sleeping after activity, in seconds
    spin_time: float = 0.002
    #: seconds between a worker's heartbeats to the head
    heartbeat_interval: float = 1.0
    #: a rank silent for this long is declared dead (ranks on the head's host are also checked by pid)
    heartbeat_timeout: float = 8.0
    #: where worker ranks run user code: "process" (executor processes under each rank: a
    #: crash fails one task, CPU-bound tasks run in parallel) or "thread" (in the rank itself:
    #: the lowest latency, no isolation)
    execution: str = "process"
    #: the memory monitor ends the newest retriable task of a rank (OutOfMemoryError, retried
    #: per max_retries) when its node uses more than this fraction of its memory; 0 disables
    memory_usage_threshold: float = 0.95
    #: the node memory, in bytes, the monitor's threshold applies to (0: the machine's, or
    #: its cgroup limit when lower)
    memory_limit: int = 0
    #: large objects live in node-shared memory (anonymous memfds): ranks and executors of a
    #: node map them with no copy, and MPI moves them only between nodes (default: on with
    #: HPCRAY_EXECUTION=process, off with thread, where ranks move them by MPI from the
    #: producer's own memory)
    node_store: bool = True
    #: bytes of freed node-store segments (4 MiB and up) each process keeps, for 2 s, to
    #: write later objects into: pages already allocated take a copy several times faster
    #: than fresh ones (-1: a quarter of the node's memory; 0: none); init(object_store_memory=)
    #: sets it
    segment_cache: int = -1
    #: while every rank is busy, the head sends a rank the next task of the shape it runs,
    #: to start there the moment the running one ends (one per running task): no round trip
    #: between tasks. Given back, to run elsewhere, if a rank frees while it still waits
    queue_ahead: bool = True
    #: run the job's processes (driver, ranks, executors) under Linux's SCHED_BATCH policy:
    #: a process woken by a message does not preempt the one running, so where the head,
    #: ranks and executors share cores, far fewer context switches per task (async tasks
    #: ran 20% faster on 2 cores). A woken process may wait up to a scheduler tick for a
    #: busy core; off: the policy the job was started with. Read from the environment
    sched_batch: bool = True
    #: CPUs each worker rank advertises
    cpus_per_rank: float = 1.0
    #: custom resources of every worker rank, as JSON, e.g. '{"accel": 1}'
    resources: dict = field(default_factory=dict)
    #: GPUs per node to use; -1 discovers them with NVML (init(num_gpus=N) sets it)
    num_gpus: int = -1
    #: how CuPy arrays move between ranks: auto, ipc, mpi, nccl or staged
    gpu_transport: str = "auto"
    #: a CuPy array from a rank on the same GPU maps the producer's memory (no copy; treat it
    #: as read-only) instead of copying it
    ipc_map: bool = True
    #: chunk size, in bytes, of host-staged GPU transfers
    staging_chunk: int = 8 << 20
    #: modules each worker rank imports while the job starts, comma-separated (e.g.
    #: "torch,sklearn.datasets"); tasks and actors there start once they are imported
    preload: str = ""
    #: seconds a collective-group member waits for the others (to join, or in one operation)
    collective_timeout: float = 180.0
    #: how "nccl" collective groups move device arrays: auto (NCCL when every member holds a
    #: GPU of its own, else staged through host memory), nccl or staged
    collective_gpu_path: str = "auto"
    #: small "mpi" collectives of a call signature seen before run in C (hpcray.collective's
    #: _fastpath extension, where it was built); off: the same steps in Python
    collective_fastpath: bool = True
    #: forward what tasks print to the driver, prefixed with rank and host
    log_to_driver: bool = True
    #: seconds MPI_Init and hpcray's start-up may take before a rank gives up (0: no bound)
    init_timeout: float = 300.0
    #: where the job keeps state across requeues (default: <working dir>/.hpcray/<job id>)
    state_dir: str = ""
    #: the signal (besides SIGTERM) that means "preempted soon": a name like USR1 or USR2, or
    #: "none"; default USR1 under srun, none under mpiexec (Hydra's SIGUSR1 means a rank died)
    preempt_signal: str = ""
    #: after the on_preempt callbacks: requeue the Slurm job? "auto" (if it was submitted with
    #: --requeue), "1" or "0"
    requeue: str = "auto"
    #: seconds a worker rank outlives a SIGTERM when the head does not end the job first
    preempt_grace: float = 30.0
    #: task events each rank keeps for hpcray.timeline() (the oldest are dropped)
    timeline_events: int = 100_000
    #: the namespace of named actors created or looked up without one (init(namespace=...))
    namespace: str = ""
    #: the job's runtime_env, as JSON (init(runtime_env=...) sets it): env_vars, working_dir
    #: and py_modules for every task and actor, under each one's own runtime_env as in Ray
    runtime_env: dict = field(default_factory=dict)


#: variables read where they act (the launcher, a library), not by the runtime's Config
ELSEWHERE: dict[str, str] = {
    "HPCRAY_MPIEXEC": "the launcher `hpcray run` and plain `python script.py` use (default: the "
                      "mpiexec next to Python, then on PATH)",
    "HPCRAY_CUDA_AWARE_MPI": "0 or 1: overrides the run-time check whether MPI takes device "
                             "pointers (never assumed; a wrong 1 crashes ranks)",
    "HPCRAY_DEVICE_PLUGINS": "comma-separated modules that register device array types when a "
                             "rank meets an unknown kind (as the test suite's stand-in GPU does)",
    "HPCRAY_EMBEDDED": "set by hpcray itself when it re-runs a plain `python script.py` under "
                       "mpiexec; not for users",
    "HPCRAY_SERVE_TOKEN": "the bearer token of Serve's HTTP ingress (default: generated)",
    "HPCRAY_SERVE_DEPLOY_TIMEOUT": "seconds `serve.run` waits for replicas to start (300)",
    "HPCRAY_TUNE_STORAGE": "where Tune keeps results (default: ~/hpcray_results)",
    "HPCRAY_HEAD_CPUS": "refused (init() raises): rank 0 runs the driver and schedules, never "
                        "tasks; start one more rank instead",
    "HPCRAY_DATA_PROGRESS": "1 or 0: hpcray.data's progress lines on or off (default: on when "
                            "the driver's stderr is a terminal)",
}


def reference() -> str:
    """Every HPCRAY_* variable as a Markdown table (docs/configuration.md is this output)."""
    import inspect
    import re

    source = inspect.getsource(Config)
    docs, pending = {}, []
    for line in source.splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
        elif pending and (m := re.match(r"(\w+): ", text)):
            docs[m.group(1)], pending = " ".join(pending), []
    regenerate = ("python -c 'from hpcray._private.core.config import reference; "
                  "print(reference(), end=\"\")' > docs/configuration.md")
    intro = ("Every setting is an environment variable. The runtime's own are fields of "
             "`Config` in `hpcray/_private/core/config.py`, read at `init()` (explicit "
             f"arguments to `init()` win); regenerate this file with `{regenerate}`.")
    rows = ["# Configuration", "", intro, "",
            "| variable | default | what it does |", "|---|---|---|"]
    for f in fields(Config):
        default = f.default if f.default_factory is MISSING else f.default_factory()
        rows.append(f"| `HPCRAY_{f.name.upper()}` | `{default!r}` | {docs.get(f.name, '')} |")
    rows += ["", "Read where they act:", "", "| variable | what it does |", "|---|---|"]
    rows += [f"| `{name}` | {text} |" for name, text in ELSEWHERE.items()]
    return "\n".join(rows) + "\n"


def _parse(kind: type, text: str):
    if kind is bool:
        return text.strip().lower() not in ("0", "false", "no", "off", "")
    if kind is dict:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {text!r}")
        return value
    return kind(text)


def load(defaults: dict | None = None, **overrides) -> Config:
    """Defaults (the job's, e.g. Slurm's ``--cpus-per-task``, over the built-in ones), then
    ``HPCRAY_*`` variables, then explicit keyword overrides."""
    head_cpus = os.environ.get("HPCRAY_HEAD_CPUS")
    if head_cpus is not None and head_cpus.strip() not in ("", "0", "0.0"):
        raise ValueError(f"HPCRAY_HEAD_CPUS={head_cpus!r}: rank 0 runs the driver and "
                         "schedules, never tasks; start one more rank instead (mpiexec/srun "
                         "-n, or init(num_cpus=...) in a plain run) and unset HPCRAY_HEAD_CPUS")
    config = Config()
    for key, value in (defaults or {}).items():
        if value:
            setattr(config, key, value)
    for f in fields(Config):
        text = os.environ.get("HPCRAY_" + f.name.upper())
        if text is not None:
            kind = type(getattr(config, f.name))
            try:
                setattr(config, f.name, _parse(kind, text))
            except ValueError as exc:
                raise ValueError(f"HPCRAY_{f.name.upper()}={text!r} is invalid: {exc}") from None
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    if config.execution == "thread" and "HPCRAY_NODE_STORE" not in os.environ and \
            "node_store" not in overrides:
        config.node_store = False
    if config.execution not in ("process", "thread"):
        raise ValueError(f"HPCRAY_EXECUTION={config.execution!r} is invalid: use \"process\" "
                         "(user code in executor processes) or \"thread\" (in the rank)")
    return config
