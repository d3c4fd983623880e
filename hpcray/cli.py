"""The ``hpcray`` console script: ``hpcray run -n N script.py [args...]`` starts an MPI job."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from hpcray._private.launch import child_pythonpath, mpiexec_command, run_job

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
    return parser


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
    n = ns.n if ns.n is not None else _default_ranks()
    argv = [sys.executable, "-m", "hpcray", script, *ns.args]
    try:
        cmd, env_add = mpiexec_command(n, argv, mpiexec=ns.mpiexec)
    except RuntimeError as exc:
        print(f"hpcray run: error: {exc}", file=sys.stderr)
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
        print(f"hpcray run: error: cannot start {cmd[0]!r}: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hpcray`` console script; returns the exit code."""
    parser = _build_parser()
    ns = parser.parse_args(argv)
    if ns.command == "run":
        return _cmd_run(ns)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
