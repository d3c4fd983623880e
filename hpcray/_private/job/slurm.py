"""The Slurm allocation, read from the environment Slurm gives each task (pure, no MPI).

Job-level facts (the same on every rank) come from :func:`job_info`; what differs between
ranks (node, task ids, the GPUs Slurm bound) from :func:`rank_info`. GPU counts are reported
as Slurm states them; hpcray's GPU resources come from device discovery, not from here.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "compress_hostlist",
    "config_defaults",
    "cpus_per_task",
    "expand_hostlist",
    "gpu_count",
    "in_allocation",
    "job_info",
    "node_info",
    "private_dir",
    "rank_info",
    "state_dir",
    "step_tasks",
    "tasks_per_node",
]


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            return value
    return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def in_allocation(env: Mapping[str, str] | None = None) -> bool:
    """True inside a Slurm job (batch script, salloc shell or srun step)."""
    env = os.environ if env is None else env
    return _first(env, "SLURM_JOB_ID", "SLURM_JOBID") is not None


# -- host lists ---------------------------------------------------------------------------
def _split_top(text: str) -> list[str]:
    """Splits at commas outside brackets: "a[1-2],b" -> ["a[1-2]", "b"]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in host list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '[' in host list {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_range(body: str, whole: str) -> list[str]:
    out = []
    for item in body.split(","):
        item = item.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not match:
            raise ValueError(f"bad range {item!r} in host list {whole!r}")
        lo, hi = match.group(1), match.group(2) or match.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in host list {whole!r}")
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        out.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
    return out


def _expand_one(pattern: str, whole: str) -> list[str]:
    """"n[1-2]x[3,5]" -> n1x3 n1x5 n2x3 n2x5 (Slurm's multi-dimensional names)."""
    match = re.search(r"\[([^\[\]]*)\]", pattern)
    if not match:
        if "[" in pattern or "]" in pattern:
            raise ValueError(f"unbalanced brackets in host list {whole!r}")
        return [pattern]
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [head + value + rest for value in _expand_range(match.group(1), whole)
            for rest in _expand_one(tail, whole)]


def expand_hostlist(text: str) -> list[str]:
    """Slurm's compressed host list ("n[1-3,5],gpu[01-02]") as a list of names, in order."""
    names: list[str] = []
    for part in _split_top(text.strip()):
        names.extend(_expand_one(part, text))
    return names


def compress_hostlist(names: list[str]) -> str:
    """The inverse of expand_hostlist for simple prefix+number names (order kept)."""
    groups: list[tuple[str, list[str]]] = []
    for name in names:
        match = re.fullmatch(r"(.*?)(\d+)", name)
        prefix, digits = (match.group(1), match.group(2)) if match else (name, "")
        if groups and groups[-1][0] == prefix and digits and groups[-1][1]:
            groups[-1][1].append(digits)
        else:
            groups.append((prefix, [digits] if digits else []))
    out = []
    for prefix, numbers in groups:
        if not numbers:
            out.append(prefix)
            continue
        if len(numbers) == 1:
            out.append(prefix + numbers[0])
            continue
        ranges: list[list[str]] = []
        for digits in numbers:
            last = ranges[-1][-1] if ranges else None
            if (last is not None and int(digits) == int(last) + 1
                    and len(digits) == len(last)):
                ranges[-1].append(digits)
            else:
                ranges.append([digits])
        body = ",".join(r[0] if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in ranges)
        out.append(f"{prefix}[{body}]")
    return ",".join(out)


def tasks_per_node(text: str) -> list[int]:
    """SLURM_TASKS_PER_NODE ("2(x3),1") as one count per node ([2, 2, 2, 1])."""
    counts: list[int] = []
    for item in text.split(","):
        item = item.strip()
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item)
        if not match:
            raise ValueError(f"bad tasks-per-node entry {item!r} in {text!r}")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def gpu_count(text: str | None) -> int | None:
    """A Slurm GPU request ("2", "a100:2", "gpu:a100:2", "a100:1,v100:1") as a number."""
    if text is None:
        return None
    total = 0
    for item in text.split(","):
        last = item.strip().rsplit(":", 1)[-1]
        match = re.fullmatch(r"(\d+)(?:\(.*\))?", last)
        if not match:
            return None
        total += int(match.group(1))
    return total


def step_tasks(env: Mapping[str, str] | None = None) -> int:
    """How many tasks srun started in this step when it started this process itself
    (0 outside a step, or when mpiexec/mpirun started it through srun-launched daemons)."""
    env = os.environ if env is None else env
    if _first(env, "SLURM_STEP_ID", "SLURM_STEPID") is None:
        return 0
    if any(env.get(k) for k in ("MPI_LOCALNRANKS", "HYDI_CONTROL_FD", "OMPI_COMM_WORLD_SIZE")):
        return 0
    return _int(_first(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")) or 0


def cpus_per_task(env: Mapping[str, str] | None = None) -> float | None:
    """The job's --cpus-per-task, or None when it was not given (Slurm's default is 1)."""
    env = os.environ if env is None else env
    text = _first(env, "SLURM_CPUS_PER_TASK")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 else None


# -- the allocation ---------------------------------------------------------------------
def job_info(env: Mapping[str, str] | None = None) -> dict | None:
    """What the whole job shares: ids, nodes, tasks, CPUs and GPUs requested, restarts."""
    env = os.environ if env is None else env
    job_id = _first(env, "SLURM_JOB_ID", "SLURM_JOBID")
    if job_id is None:
        return None
    nodelist_text = _first(env, "SLURM_JOB_NODELIST", "SLURM_NODELIST") or ""
    try:
        nodelist = expand_hostlist(nodelist_text)
    except ValueError:
        nodelist = [nodelist_text] if nodelist_text else []
    tpn_text = _first(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    try:
        tpn = tasks_per_node(tpn_text) if tpn_text else []
    except ValueError:
        tpn = []
    gpus_per_node = _first(env, "SLURM_GPUS_PER_NODE")
    gpus_per_task = _first(env, "SLURM_GPUS_PER_TASK")
    info = {
        "job_id": job_id,
        "step_id": _first(env, "SLURM_STEP_ID", "SLURM_STEPID"),
        "job_name": _first(env, "SLURM_JOB_NAME"),
        "cluster": _first(env, "SLURM_CLUSTER_NAME"),
        "partition": _first(env, "SLURM_JOB_PARTITION"),
        "account": _first(env, "SLURM_JOB_ACCOUNT"),
        "nodelist": nodelist,
        "num_nodes": _int(_first(env, "SLURM_JOB_NUM_NODES", "SLURM_NNODES")) or len(nodelist),
        "ntasks": _int(_first(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")),
        "tasks_per_node": tpn,
        "cpus_per_task": cpus_per_task(env),
        "gpus": gpu_count(_first(env, "SLURM_GPUS")),
        "gpus_per_node": gpu_count(gpus_per_node),
        "gpus_per_task": gpu_count(gpus_per_task),
        "restart_count": _int(_first(env, "SLURM_RESTART_COUNT")) or 0,
        "array_job_id": _first(env, "SLURM_ARRAY_JOB_ID"),
        "array_task_id": _int(_first(env, "SLURM_ARRAY_TASK_ID")),
        "submit_dir": _first(env, "SLURM_SUBMIT_DIR"),
    }
    return info


def _visible_gpus(env: Mapping[str, str]) -> list[str] | None:
    text = _first(env, "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    return [g.strip() for g in text.split(",") if g.strip()]


def rank_info(env: Mapping[str, str] | None = None) -> dict | None:
    """What Slurm says about this task: node, task ids, CPUs and GPUs on its node."""
    env = os.environ if env is None else env
    if not in_allocation(env):
        return None
    return {
        "node_name": _first(env, "SLURMD_NODENAME"),
        "proc_id": _int(_first(env, "SLURM_PROCID")),
        "local_id": _int(_first(env, "SLURM_LOCALID")),
        "node_index": _int(_first(env, "SLURM_NODEID")),
        "cpus_on_node": _int(_first(env, "SLURM_CPUS_ON_NODE")),
        "gpus_on_node": _int(_first(env, "SLURM_GPUS_ON_NODE")),
        "gpu_ids": _visible_gpus(env),
    }


def config_defaults() -> dict:
    """The job's defaults for hpcray's settings: a rank's CPUs are Slurm's --cpus-per-task
    (HPCRAY_* variables and init() arguments still win)."""
    return {"cpus_per_rank": cpus_per_task()}


def node_info(rank: dict | None) -> dict | None:
    """The node-level part of a rank_info dict (what every rank on that node shares)."""
    if rank is None:
        return None
    return {k: rank[k] for k in ("node_name", "node_index", "cpus_on_node", "gpus_on_node")}


def private_dir(path: str) -> str:
    """Creates path (mode 0700) if missing, and refuses a directory another user could have
    planted or can change: one that is a symlink, is owned by someone else, or is writable
    by group or others. Whatever hpcray reads back from it (checkpoints, pickles) is then the
    job owner's own."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    problem = ""
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory (a symlink or a file)"
    elif info.st_uid != os.getuid():
        problem = f"belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
    elif info.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    if problem:
        raise PermissionError(
            f"hpcray: the job's state directory {path} {problem}, so what is in it cannot be "
            f"trusted. Remove it, or chmod go-w it if it is yours, or set HPCRAY_STATE_DIR to "
            f"a directory of your own.")
    return path


def state_dir(job_id: str, explicit: str = "", cwd: str | None = None,
              tmpdir: str | None = None) -> str:
    """Where a job keeps what must survive a requeue (Slurm keeps the job id across requeues):
    ``explicit`` (HPCRAY_STATE_DIR) if given, else ``<working dir>/.hpcray/<job id>``, else,
    when the working directory is not writable, ``$TMPDIR/hpcray-<job id>``."""
    if explicit:
        return str(Path(explicit).expanduser().absolute())
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(job_id))
    base = Path(cwd or os.getcwd())
    if os.access(base, os.W_OK | os.X_OK):
        return str(base / ".hpcray" / safe)
    return str(Path(tmpdir or os.environ.get("TMPDIR") or "/tmp") / f"hpcray-{safe}")
