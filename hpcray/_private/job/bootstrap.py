"""SPMD bootstrap: every rank calls init(); rank 0 returns as the head, the others serve.

Under mpiexec/srun the job's ranks are the cluster. A plain ``python script.py``
(a single rank) spawns local worker ranks with MPI_Comm_spawn instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import itertools
import os
import random
import resource
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core import config as config_mod
from ..core import init_options
from ..core.context import set_current
from ..core.procs import batch_scheduling, process_gone
from ..core.runtime import RankInfo
from ..device import discovery as gpu_mod
from ..device.registry import cuda_aware_mpi, set_has_gpu
from . import preload, slurm
from .preempt import WorkerPreemption, preempt_signal

if TYPE_CHECKING:
    from ..core.head import HeadRuntime
    from ..transport.mpi import Transport


def _mpi():
    if "mpi4py.MPI" not in sys.modules:
        # the mpich wheel's mpiexec must be on PATH for MPI_Comm_spawn in a singleton
        bindir = os.path.dirname(sys.executable)
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        import mpi4py

        mpi4py.rc.finalize = False
        # every MPI call is made under the transport lock, one thread at a time
        mpi4py.rc.thread_level = "serialized"
    from mpi4py import MPI

    return MPI


def _node_memory() -> int:
    """Physical memory of this node, in bytes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        import psutil

        return psutil.virtual_memory().total


def _node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _describe(comm, config) -> list[RankInfo]:
    """Every rank's host, pid, node, GPUs and resources, known to all ranks."""
    MPI = _mpi()
    rank = comm.Get_rank()
    slurm_task = slurm.rank_info()  # before GPU mapping narrows CUDA_VISIBLE_DEVICES
    node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED)
    members = node_comm.allgather(rank)
    declared = config.num_gpus if config.num_gpus >= 0 else None
    gpus = gpu_mod.discover(declared) if node_comm.Get_rank() == 0 else None
    gpus = node_comm.bcast(gpus, root=0)
    node_comm.Free()
    leader = members[0]
    workers = [r for r in members if r != 0]
    if rank == 0:
        mine = gpu_mod.Assignment(gpus[:1], 0.0)
    else:
        mine = gpu_mod.assign(gpus, len(workers))[workers.index(rank)]
    set_has_gpu(bool(mine.gpus))
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_mod.visible_devices(mine.gpus, gpus)
    resources = {}
    if rank != 0:
        resources = {"CPU": float(config.cpus_per_rank),
                     "memory": float(_node_memory() // max(len(members) - (leader == 0), 1))}
        if mine.share:
            resources["GPU"] = mine.share
        resources.update({k: float(v) for k, v in config.resources.items()})
    rows = comm.allgather((socket.gethostname(), os.getpid(), leader, _node_name(), resources,
                           mine.gpus, bool(mine.gpus) and cuda_aware_mpi(), slurm_task))
    leaders = sorted({row[2] for row in rows})
    return [RankInfo(r, host, pid, f"node-{leaders.index(lead)}", name, res, gpus, cuda_mpi,
                     slurm=sl, slurm_node=slurm.node_info(sl))
            for r, (host, pid, lead, name, res, gpus, cuda_mpi, sl) in enumerate(rows)]


def _job_identity(config) -> dict:
    """Rank 0's view of the job: its id (Slurm's, kept across requeues), Slurm's allocation,
    and the state directory."""
    job = slurm.job_info()
    job_id = job["job_id"] if job else uuid.uuid4().hex[:8]
    return {"job_id": job_id, "slurm": job, "session": next(_sessions),
            "state_dir": slurm.state_dir(job_id, config.state_dir)}


# each init() of this process is a new session (see protocol.Ids); random start: a process
# that restarts does not reuse its predecessor's numbers
_sessions = itertools.count(random.SystemRandom().randrange(1, 1 << 20))


def _check_srun(world_size: int) -> None:
    """srun started several tasks but MPI sees one: the --mpi plugin does not fit the MPI."""
    tasks = slurm.step_tasks()
    if world_size == 1 and tasks > 1:
        print(f"hpcray: error: srun started {tasks} tasks but MPI sees a job of 1 rank, so each "
              "task would be a separate job. Pass the --mpi plugin your MPI library speaks: "
              "srun --mpi=pmi2 for MPICH (incl. the mpich wheel), --mpi=pmix for Open MPI; "
              "`srun --mpi=list` shows what this cluster offers.", file=sys.stderr, flush=True)
        os._exit(2)


def _raise_fd_limit() -> None:
    """The soft limit on open files up to the hard one: a rank holds MPI's descriptors, Serve's
    connections and the user's files, and a low soft limit (1024 is common) is easy to exhaust."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _bound_startup(timeout: float) -> None:
    """MPI_Init and the start-up collectives wait for every rank; if one never comes (it died
    in MPI_Init, the launcher lost it), end this rank after ``timeout`` seconds instead of
    hanging until the job's time limit. faulthandler's timer runs in a C thread, so it fires
    even while MPI_Init holds the GIL; it prints where each thread was, then exits with 1."""
    if timeout > 0:
        faulthandler.dump_traceback_later(timeout, exit=True,
                                          file=sys.__stderr__ or sys.stderr)


def _spawn_workers(MPI, n: int):
    """Interactive sessions only: worker ranks started with MPI_Comm_spawn (they know their
    parent through MPI_Comm_get_parent)."""
    inter = MPI.COMM_SELF.Spawn(sys.executable, args=["-m", "hpcray._private.job.worker_main"],
                                maxprocs=n)
    return inter, inter.Merge(high=False)


def _interactive() -> bool:
    return bool(getattr(sys, "ps1", None) or sys.flags.interactive or not sys.argv
                or sys.argv[0] in ("",))


def _relaunch(workers: int) -> None:
    """Runs this same command again as an MPI job of 1 head + ``workers`` ranks, then exits.

    Code before init() runs once more in the job's rank 0, as with multiprocessing's spawn.
    """
    from .launch import child_pythonpath, mpiexec_command, run_job

    argv = [sys.executable, *sys.orig_argv[1:]]
    cmd, env_add = mpiexec_command(workers + 1, argv)
    env = dict(os.environ, **env_add, HPCRAY_EMBEDDED="1")
    pythonpath = child_pythonpath()
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(run_job(cmd, env))


_peer_failure: dict[str, Any] = {"installed": False, "callback": None}


def _survive_peer_failure(on_failure) -> None:
    """Hydra tells surviving ranks that a rank died with SIGUSR1, whose default action kills.

    Catching it keeps the job alive so the head can fail or retry the lost work. One handler,
    installed once per process whatever the number of init() calls; it only calls the current
    session's callback, which must be signal-safe (no locks: HeadRuntime.check_soon).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    _peer_failure["callback"] = on_failure
    if not _peer_failure["installed"]:
        signal.signal(signal.SIGUSR1, _on_peer_failure)
        _peer_failure["installed"] = True


def _on_peer_failure(signum, frame) -> None:
    callback = _peer_failure["callback"]
    if callback is not None:
        callback()


@dataclass(eq=False)
class Job:
    """A started job as one rank holds it: MPI, the job's communicator, who is who."""

    MPI: Any
    comm: Any                 # the job's communicator; rank 0 is the head
    spawned: Any              # intercommunicator of a plain-python session's spawned ranks
    config: config_mod.Config
    ranks: list[RankInfo]
    identity: dict            # job id (Slurm's, kept across requeues), allocation, state dir
    transport: Transport
    visible_before: str | None = None  # the driver's CUDA_VISIBLE_DEVICES, restored at stop
    released: bool = False    # the head met the workers' last barrier

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()


def start(overrides: dict, num_cpus: int | None):
    """Collective start-up. Returns the head runtime on rank 0; never returns elsewhere."""
    job = _join(overrides, num_cpus)
    if job.rank == 0:
        return head_start(job)
    worker_start(job)


def _join(overrides: dict, num_cpus: int | None) -> Job:
    """Every rank: MPI_Init (or re-running the command as an MPI job), the head's settings,
    the job's identity and every rank's description."""
    from .launch import under_mpi_launcher

    embedded = os.environ.get("HPCRAY_EMBEDDED") == "1"
    if not embedded and not under_mpi_launcher() and not _interactive():
        _check_srun(1)
        _relaunch(num_cpus if num_cpus is not None else (os.cpu_count() or 1))
    _raise_fd_limit()
    defaults = slurm.config_defaults()
    early = config_mod.load(defaults)  # the environment's settings, before the head's overrides
    batch_scheduling(early.sched_batch)  # before any thread, the forkserver and MPI start
    _bound_startup(early.init_timeout)
    if early.execution == "process" and not _launcher_rank_is_head():
        from ..core.executors import start_forkserver

        start_forkserver([m.strip() for m in early.preload.split(",") if m.strip()])
    MPI = _mpi()
    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_SERIALIZED)
    world = MPI.COMM_WORLD
    parent = MPI.Comm.Get_parent()
    if parent == MPI.COMM_NULL and not embedded:
        _check_srun(world.Get_size())
    spawned = None
    if parent != MPI.COMM_NULL:
        comm = parent.Merge(high=True)
        spawned = parent
    elif world.Get_size() == 1 and not embedded:
        count = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
        if count:
            spawned, comm = _spawn_workers(MPI, count)
        else:  # init(num_cpus=0): a driver-only session
            comm = MPI.COMM_SELF.Dup()
    else:
        comm = world.Dup()
        if not embedded:  # every rank raises the same error
            init_options.num_cpus_under_launcher(num_cpus, comm.Get_size() - 1,
                                                 early.cpus_per_rank)
    if comm.Get_rank() != 0:
        preload.start(early.preload)
    overrides = dict(comm.bcast(overrides, root=0))
    driver_path = overrides.pop("sys_path", None) or []
    if comm.Get_rank() != 0:  # as Ray: what the driver can import, its tasks can too
        sys.path.extend(p for p in driver_path if p not in sys.path)
    config = config_mod.load(defaults, **overrides)
    identity = comm.bcast(_job_identity(config) if comm.Get_rank() == 0 else None, root=0)
    visible_before = os.environ.get("CUDA_VISIBLE_DEVICES")
    ranks = _describe(comm, config)
    faulthandler.cancel_dump_traceback_later()  # start-up is over
    from ..transport.mpi import Transport, ulfm_enabled  # imports mpi4py.MPI: once MPI is up

    transport = Transport(comm, ulfm=ulfm_enabled())
    return Job(MPI, comm, spawned, config, ranks, identity, transport, visible_before)


def _launcher_rank_is_head() -> bool:
    """Whether the launcher says this process will be rank 0 (which runs no executors)."""
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    if main is not None and main.name == "hpcray._private.job.worker_main":
        return False  # a worker spawned by an interactive driver
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if name in os.environ:
            return os.environ[name] == "0"
    return True  # a driver that spawns its workers


def head_start(job: Job) -> HeadRuntime:
    """Rank 0: the head's runtime, its progress thread running; the driver goes on."""
    from ..core.head import HeadRuntime  # each role imports its own half only

    head = HeadRuntime(job.transport, job.config, job.ranks, job.identity["job_id"],
                       job.identity["session"])
    head.job = job.identity
    head.mpi_job = job
    set_current(head)
    _survive_peer_failure(head.check_soon)
    job.transport.on_failure = head.check_soon  # ULFM: MPI reported a dead rank
    head.start()
    return head


def worker_start(job: Job) -> None:
    """Ranks 1..N-1: serve tasks until the head says stop, then leave (never returns)."""
    from ..core.worker import WorkerRuntime  # each role imports its own half only

    worker = WorkerRuntime(job.transport, job.config, job.ranks, job.identity["job_id"],
                           job.identity["session"])
    worker.job = job.identity
    worker.before_user_code = preload.wait
    set_current(worker)
    _survive_peer_failure(lambda: None)

    def head_lost() -> None:
        """ULFM: MPI reported the head dead (from any node, where the pid check sees only
        its own): this rank leaves, as when the head's pid is gone."""
        if 0 in job.transport.dead and not worker.stopping:
            print(f"hpcray: rank {worker.rank}: MPI reported the head's failure (ULFM); "
                  "exiting", file=sys.__stderr__, flush=True)
            worker.stopping = "orphaned"
            worker.backoff.kick()

    job.transport.on_failure = head_lost
    term = WorkerPreemption(worker, job.config.preempt_grace,
                            preempt_signal(job.config.preempt_signal))
    term.install()
    worker.term_expired = term.expired
    worker.forward_output()
    if job.config.runtime_env:  # for the code that runs in this process (executors get theirs)
        init_options.apply_in_process(job.config.runtime_env)
    exiting = threading.Lock()

    def end(status: int = 0) -> None:
        if exiting.acquire(blocking=False):
            worker.close()
            job.transport.close()
            worker_stop(job, status, clean=worker.stopping == "shutdown",
                        head_pid=worker.head_pid)

    worker.exit_fn = end
    status = 0
    try:
        worker.run()
    except BaseException:  # noqa: BLE001 - any failure of the loop ends this rank with status 1
        import traceback

        traceback.print_exc(file=sys.__stderr__)
        status = 1
    end(status)
    while True:  # the sentinel thread is ending the rank
        time.sleep(1)


def head_stop(head: HeadRuntime) -> None:
    """Stops the workers (and gives the driver back the CUDA_VISIBLE_DEVICES it had); with a
    dead rank the job ends here with status 1."""
    head.shutdown()
    job = head.mpi_job
    if job.spawned is not None and not head.dead_ranks:
        # a session of an interactive process: its spawned workers leave now (they would wait
        # for the interpreter's exit, and Hydra kills a session whose ranks outlive their
        # watchdog), and MPI stays up for the next init()
        with _watchdog(10, 1):
            try:
                _release_workers(job)
            except job.MPI.Exception as exc:
                print(f"hpcray: the session's workers did not leave cleanly: {exc}",
                      file=sys.stderr)
    before = job.visible_before
    if before is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = before
    if head.dead_ranks:
        print(f"hpcray: ranks {head.dead_ranks} died during the job; exiting with status 1",
              file=sys.stderr, flush=True)
        worker_stop(head.mpi_job, 1, clean=False)


def worker_stop(job: Job, status: int, clean: bool, head_pid: int = 0) -> None:
    """Ends a worker (or a head whose job lost ranks): a last barrier with the head,
    MPI_Finalize, then os._exit.

    Workers leave only after the head's own exit so the launcher sees the head's status
    (Hydra may kill a head that is still running when all its peers are gone).
    """
    MPI, comm = job.MPI, job.comm
    for stream in (sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    if clean:
        with _watchdog(30, status):
            try:
                request = comm.Ibarrier()
                while not request.Test():
                    if head_pid and process_gone(head_pid):
                        os._exit(status)
                    time.sleep(0.01)
                # no comm.Free(): it fails while unread messages (late results) are pending
                _drain(job)
                if job.spawned is not None:
                    job.spawned.Disconnect()
                MPI.Finalize()
                deadline = time.monotonic() + 5
                while (head_pid and job.spawned is None and not process_gone(head_pid)
                       and time.monotonic() < deadline):
                    time.sleep(0.005)
                _libc_exit(status)
            except MPI.Exception as exc:
                # under ULFM a rank that died during the job fails the last barrier: expected
                if not (job.transport.ulfm and exc.Get_error_class() == MPI.ERR_PROC_FAILED):
                    print(f"hpcray: a worker's MPI shutdown failed: {exc}", file=sys.__stderr__)
    os._exit(status)


def _libc_exit(status: int) -> None:
    """Leaves through the C library's exit(), which runs the MPI library's exit handlers:
    MPICH's tells Hydra that this rank finalized (os._exit skips it, and Hydra then kills
    ranks still in their post-finalize wait: 'Killed (signal 9)' on clean runs). Python's
    own interpreter shutdown is still skipped, as with os._exit."""
    ctypes.CDLL(None).exit(status)


def head_finalize(head: HeadRuntime) -> None:
    """At interpreter exit on rank 0: MPI_Finalize together with the workers (bounded in time)."""
    job = head.mpi_job
    with _watchdog(10, 1):
        try:
            _release_workers(job)
            job.MPI.Finalize()
        except job.MPI.Exception as exc:
            print(f"hpcray: MPI shutdown failed on rank 0: {exc}", file=sys.stderr)


@contextlib.contextmanager
def _watchdog(seconds: float, status: int):
    """Bounds a shutdown step that waits on other ranks: past ``seconds`` the process exits
    with ``status`` instead of hanging.

    An MPI call that blocks while holding the GIL (MPI_Finalize waiting on the process
    manager for a dead peer) would stall a Python timer forever, so faulthandler's C thread
    backs it up 5 s later: it prints the stacks and exits with status 1."""
    timer = threading.Timer(seconds, os._exit, args=(status,))
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(seconds + 5, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        timer.cancel()


def _release_workers(job: Job) -> None:
    """The head's half of the workers' last barrier (they leave after it), once per session."""
    if job.released:
        return
    job.released = True
    job.transport.close()
    job.comm.Ibarrier().Wait()  # matches the workers' Ibarrier (blocking ones would not)
    _drain(job)
    if job.spawned is not None:
        job.spawned.Disconnect()


def _drain(job: Job) -> None:
    """Receives and drops what peers sent that was never read (a last heartbeat, a late
    result): after the last barrier nothing more comes, and MPI warns about unmatched messages
    left behind at disconnect or finalize."""
    MPI = job.MPI
    status = MPI.Status()
    while True:
        message = job.comm.improbe(MPI.ANY_SOURCE, MPI.ANY_TAG, status)
        if message is None:
            return
        message.Recv([bytearray(status.Get_count(MPI.BYTE)), MPI.BYTE])


class _ExitHook:
    """Remembers whether the driver died of an exception."""

    failed = False

    def install(self) -> None:
        previous = sys.excepthook

        def hook(kind, value, tb):
            self.failed = True
            previous(kind, value, tb)

        sys.excepthook = hook


exit_hook = _ExitHook()
