"""The ``hpcray`` console script: ``hpcray run -n N script.py [args...]`` starts an MPI job;
``hpcray sbatch [options] script.py [args...]`` submits one to Slurm; ``hpcray serve -n N
module:app`` serves an application over HTTP."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ._private.job.launch import child_pythonpath, mpiexec_command, run_job

__all__ = ["main"]


def _version() -> str:
    try:
        from hpcray import __version__

        return str(__version__)
    except ImportError:  # hpcray/__init__.py missing or without __version__
        return "0.1.0"


def _default_ranks() -> int:
    # One head/driver rank plus one worker rank per core.
    return (os.cpu_count() or 1) + 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"need at least 1 rank, got {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcray",
        description="Run a Ray-style Python script as an MPI job (rank 0 = head + driver).",
    )
    parser.add_argument("--version", action="version", version=f"hpcray {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run a script on N MPI ranks via mpiexec",
        description="Run SCRIPT on N MPI ranks: rank 0 is the head and driver, the rest are workers.",
    )
    run.add_argument(
        "-n",
        "--np",
        dest="n",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"number of MPI ranks (default: cpu_count + 1 = {_default_ranks()})",
    )
    run.add_argument("--mpiexec", metavar="PATH", help="mpiexec/mpirun to use")
    run.add_argument(
        "--dry-run", action="store_true", help="print the mpiexec command and exit"
    )
    run.add_argument("script", help="Python script to run (use -- before it if needed)")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    _add_sbatch_parser(sub)
    _add_serve_parser(sub)
    return parser


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """The options of ``hpcray serve`` and ``python -m hpcray.serve``."""
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; every address needs the bearer "
                        "token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    p.add_argument("--name", default="default", help="application name (default 'default')")
    p.add_argument("--route-prefix", default="/", help="route prefix (default /)")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="larger request bodies get 413 (default 10 MiB)")
    p.add_argument("--no-token", dest="require_token", action="store_false",
                   help="serve loopback without a bearer token (any local user can call it)")
    p.add_argument("--debug-errors", action="store_true",
                   help="show replicas' errors (message, rank, traceback) to HTTP clients")
    p.add_argument("target", metavar="module:app",
                   help="an Application (Deployment.bind(...)) or Deployment, by import path")


def _add_serve_parser(sub) -> None:
    sv = sub.add_parser(
        "serve", help="serve an application over HTTP on N MPI ranks",
        description="Start a job of N ranks serving module:app over HTTP (like `serve run`); "
                    "inside an allocation run `srun python -m hpcray.serve module:app` instead.")
    sv.add_argument("-n", "--np", dest="n", type=_positive_int, default=None, metavar="N",
                    help=f"number of MPI ranks (default: cpu_count + 1 = {_default_ranks()})")
    sv.add_argument("--mpiexec", metavar="PATH", help="mpiexec/mpirun to use")
    sv.add_argument("--dry-run", action="store_true", help="print the mpiexec command and exit")
    add_serve_options(sv)


def _add_sbatch_parser(sub) -> None:
    sb = sub.add_parser(
        "sbatch",
        help="write a Slurm batch script for SCRIPT and submit it",
        description="Write a batch script that runs SCRIPT as an hpcray job (one MPI rank per "
        "Slurm task; rank 0 is the head and driver) and submit it with sbatch; prints the job "
        "id. --dry-run prints the script instead.",
    )
    sb.add_argument("-N", "--nodes", type=_positive_int, default=1, help="nodes (default 1)")
    sb.add_argument("--ranks-per-node", type=_positive_int, default=2, metavar="R",
                    help="MPI ranks per node, the head included (default 2)")
    sb.add_argument("--cpus-per-rank", type=_positive_int, metavar="C",
                    help="CPUs per rank (--cpus-per-task); each worker advertises C CPUs")
    sb.add_argument("--gpus-per-node", type=_positive_int, metavar="G", help="GPUs per node")
    sb.add_argument("-t", "--time", help="time limit, e.g. 01:00:00")
    sb.add_argument("-p", "--partition")
    sb.add_argument("-A", "--account")
    sb.add_argument("-J", "--job-name", help="job name (default: the script's name)")
    sb.add_argument("-o", "--output", help="output file (default %%x-%%j.out)")
    sb.add_argument("--signal", metavar="[B:]SIG[@SECONDS]",
                    help="warning signal before the time limit, e.g. B:USR1@60; hpcray runs "
                    "the on_preempt callbacks when it arrives")
    sb.add_argument("--requeue", action="store_true",
                    help="requeue the job after preemption or the --signal warning")
    sb.add_argument("--sbatch-arg", action="append", default=[], metavar="OPTION",
                    help="any other sbatch option, e.g. --sbatch-arg=--mem=16G (repeatable)")
    sb.add_argument("--launcher", choices=("srun", "mpiexec"), default="srun",
                    help="start the ranks with srun (default) or the mpiexec hpcray finds")
    sb.add_argument("--mpi", default="pmi2",
                    help="srun's MPI plugin (default pmi2, for MPICH; pmix for Open MPI)")
    sb.add_argument("--mpiexec", metavar="PATH", help="mpiexec for --launcher mpiexec")
    sb.add_argument("--python", default=sys.executable,
                    help=f"interpreter on the nodes (default {sys.executable})")
    sb.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    sb.add_argument("script", help="Python script to run (use -- before it if needed)")
    sb.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")


def _cmd_serve(ns: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "hpcray.serve", "--host", ns.host, "--port", str(ns.port),
            "--name", ns.name, "--route-prefix", ns.route_prefix, ns.target]
    if ns.max_body_bytes is not None:
        argv[-1:-1] = ["--max-body-bytes", str(ns.max_body_bytes)]
    if not ns.require_token:
        argv[-1:-1] = ["--no-token"]
    if ns.debug_errors:
        argv[-1:-1] = ["--debug-errors"]
    return _launch(ns, argv, "hpcray serve")


def _cmd_run(ns: argparse.Namespace) -> int:
    script = ns.script
    if not Path(script).is_file():
        print(
            f"hpcray run: error: script {script!r} not found (working directory: {os.getcwd()}).\n"
            "Pass the path of an existing Python script: "
            "hpcray run -n N [--mpiexec PATH] [--] path/to/script.py [args...]",
            file=sys.stderr,
        )
        return 2
    return _launch(ns, [sys.executable, "-m", "hpcray", script, *ns.args], "hpcray run")


def _launch(ns: argparse.Namespace, argv: list[str], prog: str) -> int:
    """Runs argv on every rank of an mpiexec job (or prints the command with --dry-run)."""
    n = ns.n if ns.n is not None else _default_ranks()
    try:
        cmd, env_add = mpiexec_command(n, argv, mpiexec=ns.mpiexec)
    except RuntimeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if ns.dry_run:
        prefix = [f"{k}={shlex.quote(v)}" for k, v in env_add.items()]
        print(" ".join([*prefix, shlex.join(cmd)]))
        return 0
    env = dict(os.environ)
    env.update(env_add)
    pythonpath = child_pythonpath()
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    try:
        return run_job(cmd, env)
    except OSError as exc:
        print(f"{prog}: error: cannot start {cmd[0]!r}: {exc}", file=sys.stderr)
        return 2


def _cmd_sbatch(ns: argparse.Namespace, argv: list[str]) -> int:
    import shutil
    import subprocess

    from ._private.job.sbatch import BatchSpec, render

    def fail(message: str) -> int:
        print(f"hpcray sbatch: error: {message}", file=sys.stderr)
        return 2

    script = Path(ns.script)
    if not script.is_file():
        return fail(f"script {ns.script!r} not found (working directory: {os.getcwd()}). "
                    "Usage: hpcray sbatch [options] [--] path/to/script.py [args...]")
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    spec = BatchSpec(
        python=ns.python, script=str(script.resolve()), args=list(args), nodes=ns.nodes,
        ranks_per_node=ns.ranks_per_node, cpus_per_rank=ns.cpus_per_rank,
        gpus_per_node=ns.gpus_per_node, time=ns.time, partition=ns.partition,
        account=ns.account, job_name=ns.job_name or script.stem, output=ns.output,
        signal=ns.signal, requeue=ns.requeue, sbatch_args=ns.sbatch_arg, launcher=ns.launcher,
        mpi=ns.mpi, command_line=shlex.join(["hpcray", "sbatch", *argv]))
    if ns.launcher == "mpiexec":
        try:
            cmd, env_add = mpiexec_command(ns.nodes * ns.ranks_per_node, ["true"],
                                           mpiexec=ns.mpiexec)
        except RuntimeError as exc:
            return fail(str(exc))
        spec.mpiexec, spec.env = cmd[:-1], dict(env_add)
    pythonpath = child_pythonpath()
    if pythonpath is not None:
        spec.env["PYTHONPATH"] = pythonpath
    try:
        text = render(spec)
    except ValueError as exc:
        return fail(str(exc))
    if ns.dry_run:
        sys.stdout.write(text)
        return 0
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        return fail("sbatch is not on PATH: run this on a Slurm login node (or use --dry-run "
                    "to see the script)")
    proc = subprocess.run([sbatch, "--parsable"], input=text, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        return fail(f"sbatch refused the job (exit {proc.returncode}): "
                    f"{proc.stderr.strip() or proc.stdout.strip()}")
    print(proc.stdout.strip().split(";")[0])
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hpcray`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    ns = parser.parse_args(argv)
    if ns.command == "run":
        return _cmd_run(ns)
    if ns.command == "sbatch":
        return _cmd_sbatch(ns, argv[1:])
    if ns.command == "serve":
        return _cmd_serve(ns)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
