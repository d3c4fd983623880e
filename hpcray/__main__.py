"""``python -m hpcray script.py [args]`` runs a script as ``__main__``; ``python -m hpcray run ...`` is the CLI."""

from __future__ import annotations

import os
import runpy
import sys

_USAGE = (
    "usage: python -m hpcray script.py [args...]\n"
    "       python -m hpcray run -n N [--mpiexec PATH] [--] script.py [args...]\n"
    "       python -m hpcray sbatch [options] [--] script.py [args...]\n"
    "       python -m hpcray serve -n N [options] module:app"
)


def main(argv: list[str] | None = None) -> int:
    """Run a script as ``__main__`` (one MPI rank) or delegate ``run``/options to hpcray.cli."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(_USAGE, file=sys.stderr)
        return 2
    if args[0] in ("run", "sbatch", "serve") or args[0].startswith("-"):
        from hpcray.cli import main as cli_main

        return cli_main(args)
    script = args[0]
    if not os.path.isfile(script):
        print(
            f"hpcray: error: script {script!r} not found (working directory: {os.getcwd()}).\n"
            "Pass the path of an existing Python script.\n" + _USAGE,
            file=sys.stderr,
        )
        return 2
    # Behave like `python script.py`: argv[0] is the script, its directory is importable.
    sys.argv = [script, *args[1:]]
    script_dir = os.path.dirname(os.path.abspath(script))
    if not sys.path or sys.path[0] != script_dir:
        sys.path.insert(0, script_dir)
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
