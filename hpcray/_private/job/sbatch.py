"""The batch script ``hpcray sbatch`` writes: pure text generation, no Slurm calls."""

from __future__ import annotations

import re
import shlex
import signal
from dataclasses import dataclass, field

__all__ = ["BatchSpec", "parse_signal_request", "render"]


@dataclass
class BatchSpec:
    """What the user asked for; ``render`` turns it into an sbatch script."""

    python: str
    script: str
    args: list[str] = field(default_factory=list)
    nodes: int = 1
    ranks_per_node: int = 2
    cpus_per_rank: int | None = None
    gpus_per_node: int | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    job_name: str | None = None
    output: str | None = None
    signal: str | None = None
    requeue: bool = False
    sbatch_args: list[str] = field(default_factory=list)
    launcher: str = "srun"
    mpi: str = "pmi2"
    #: the mpiexec command prefix (launcher "mpiexec"), e.g. ["/x/mpiexec", "-n", "4", ...]
    mpiexec: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    command_line: str = ""


def parse_signal_request(text: str) -> tuple[bool, signal.Signals, int | None]:
    """sbatch's ``[{R|B}:]SIG[@TIME]`` as (batch shell only, signal, seconds before the end)."""
    match = re.fullmatch(r"(?:([RB]{1,2}):)?([A-Za-z0-9]+)(?:@(\d+))?", text.strip())
    if not match:
        raise ValueError(f"--signal={text!r} is not of the form [B:]SIG[@SECONDS], "
                         "e.g. B:USR1@60 or USR1@120")
    flags, name, seconds = match.group(1) or "", match.group(2).upper(), match.group(3)
    try:
        sig = signal.Signals(int(name)) if name.isdigit() else signal.Signals[
            name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise ValueError(f"--signal={text!r}: {name!r} is not a signal name or number "
                         "(try USR1, USR2 or TERM)") from None
    return "B" in flags, sig, int(seconds) if seconds else None


def _directives(spec: BatchSpec, signal_text: str | None) -> list[str]:
    lines = [f"--job-name={spec.job_name}" if spec.job_name else None,
             f"--nodes={spec.nodes}",
             f"--ntasks-per-node={spec.ranks_per_node}",
             f"--cpus-per-task={spec.cpus_per_rank}" if spec.cpus_per_rank else None,
             f"--gpus-per-node={spec.gpus_per_node}" if spec.gpus_per_node else None,
             f"--time={spec.time}" if spec.time else None,
             f"--partition={spec.partition}" if spec.partition else None,
             f"--account={spec.account}" if spec.account else None,
             f"--output={spec.output or '%x-%j.out'}",
             "--requeue" if spec.requeue else None,
             # a requeued job writes to the same file again: keep the earlier runs' output
             "--open-mode=append" if spec.requeue else None,
             f"--signal={signal_text}" if signal_text else None]
    out = [f"#SBATCH {line}" for line in lines if line]
    out += [f"#SBATCH {arg}" for arg in spec.sbatch_args]
    return out


def render(spec: BatchSpec) -> str:
    """The whole batch script."""
    if spec.launcher not in ("srun", "mpiexec"):
        raise ValueError(f"--launcher must be srun or mpiexec, got {spec.launcher!r}")
    if spec.nodes < 1 or spec.ranks_per_node < 1:
        raise ValueError("--nodes and --ranks-per-node must be at least 1")
    if spec.nodes * spec.ranks_per_node < 2:
        raise ValueError("an hpcray job needs at least 2 ranks (rank 0 is the head, the others "
                         "run tasks): raise --ranks-per-node or --nodes")
    for arg in spec.sbatch_args:
        if not arg.startswith("-") or "\n" in arg:
            raise ValueError(f"--sbatch-arg {arg!r} must be one sbatch option, e.g. "
                             "--sbatch-arg=--mem=16G")
    warn_only_batch, sig, seconds = (parse_signal_request(spec.signal) if spec.signal
                                     else (False, None, None))
    signal_text = spec.signal
    env = dict(spec.env)
    if sig is not None and spec.launcher == "mpiexec" and not warn_only_batch:
        # Slurm would signal mpiexec's daemons too, and Hydra's proxies die of USR2: signal
        # only this shell, which hands the warning to mpiexec as SIGTERM (Hydra forwards it)
        warn_only_batch = True
        flags = spec.signal.split(":", 1)[0] + "B" if ":" in spec.signal else "B"
        signal_text = f"{flags}:{sig.name[3:]}" + (f"@{seconds}" if seconds else "")
    if sig is not None and spec.launcher == "srun" and sig != signal.SIGTERM:
        env["HPCRAY_PREEMPT_SIGNAL"] = sig.name[3:]
    argv = [spec.python, "-m", "hpcray", spec.script, *spec.args]
    if spec.launcher == "srun":
        launch = ["srun", f"--mpi={spec.mpi}", "--cpu-bind=none", "--kill-on-bad-exit=0", *argv]
    else:
        launch = [*spec.mpiexec, *argv]
    lines = ["#!/bin/bash",
             "# Written by `hpcray sbatch`" + (f": {spec.command_line}" if spec.command_line else ""),
             *_directives(spec, signal_text),
             "",
             "set -uo pipefail"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines += [('echo "hpcray: job $SLURM_JOB_ID run $((${SLURM_RESTART_COUNT:-0} + 1)) on '
               '$SLURM_JOB_NODELIST"')]
    if not warn_only_batch and spec.launcher == "srun":
        lines.append("exec " + shlex.join(launch))
        return "\n".join(lines) + "\n"
    # The launcher runs in the background so that this shell can pass signals on (bash runs
    # traps only between commands, never during a foreground one).
    lines += [shlex.join(launch) + " &", "step=$!"]
    if warn_only_batch:
        forward = sig.name[3:] if spec.launcher == "srun" else "TERM"
        lines.append(f"trap 'kill -{forward} \"$step\" 2>/dev/null || true' {sig.name[3:]}")
    if sig != signal.SIGTERM:
        lines += ["# scancel and preemption signal the ranks themselves: keep waiting for them",
                  "trap 'echo \"hpcray: SIGTERM, waiting for the job step\"' TERM"]
    lines += ['while kill -0 "$step" 2>/dev/null; do',
              '    wait "$step"',
              "done",
              'wait "$step"']
    return "\n".join(lines) + "\n"
