"""get_runtime_context(): where the calling code runs."""

from __future__ import annotations

from ._private.job.slurm import private_dir


class RuntimeContext:
    """Job, rank, node, task and actor of the calling code (Ray's names, plus ranks)."""

    def __init__(self, runtime):
        self._rt = runtime

    def get_job_id(self) -> str:
        return self._rt.job_id

    def get_node_id(self) -> str:
        return self._rt.ranks[self._rt.rank].node_id

    def get_worker_id(self) -> str:
        return f"{self._rt.job_id}-{self._rt.rank}"

    def get_task_id(self) -> str | None:
        task = getattr(self._rt.local, "task_id", 0)
        return f"{task:016x}" if task else None

    def get_actor_id(self) -> str | None:
        actor = getattr(self._rt.local, "actor_id", 0)
        return f"{actor:016x}" if actor else None

    def get_rank(self) -> int:
        """The MPI rank (0 is the head and driver)."""
        return self._rt.rank

    def get_world_size(self) -> int:
        return len(self._rt.ranks)

    def get_host(self) -> str:
        return self._rt.host

    def get_node_name(self) -> str:
        return self._rt.ranks[self._rt.rank].node_name

    def get_accelerator_ids(self) -> dict[str, list]:
        return {"GPU": self._rt.gpu_ids()}

    def get_gpu_identity(self) -> str:
        """The calling rank's own GPU, unique in the job (its UUID, or node/index where NVML
        gave none); "" when the rank has no GPU. Ranks sharing a GPU report the same one."""
        return self._rt.ranks[self._rt.rank].gpu_identity()

    def get_slurm_info(self) -> dict | None:
        """Slurm's allocation as this rank sees it, or None outside Slurm.

        The job's part (``job_id``, ``step_id``, ``nodelist``, ``tasks_per_node``,
        ``cpus_per_task``, ``gpus_per_node``, ``gpus_per_task``, ``restart_count``, array ids,
        ...) merged with this rank's task (``node_name``, ``proc_id``, ``local_id``,
        ``gpus_on_node``, ``gpu_ids``). GPU numbers are Slurm's, as reported.
        """
        job = self._rt.job.get("slurm")
        if job is None:
            return None
        mine = self._rt.ranks[self._rt.rank].slurm or {}
        return {**job, **mine}

    def get_restart_count(self) -> int:
        """How many times Slurm restarted (requeued) this job: 0 on its first run."""
        job = self._rt.job.get("slurm")
        return int(job["restart_count"]) if job else 0

    def get_state_dir(self) -> str:
        """The job's own directory for state that must survive a requeue (created on first
        call): ``$HPCRAY_STATE_DIR``, else ``<working dir>/.hpcray/<job id>``, else
        ``$TMPDIR/hpcray-<job id>``. Slurm keeps the job id when it requeues a job.

        It is made 0700; one that another user owns or can write is refused (PermissionError
        saying what to do): a planted directory must not feed the job its files."""
        return private_dir(self._rt.job["state_dir"])

    @property
    def slurm(self) -> dict | None:
        return self.get_slurm_info()

    @property
    def restart_count(self) -> int:
        return self.get_restart_count()

    @property
    def state_dir(self) -> str:
        return self.get_state_dir()

    @property
    def job_id(self) -> str:
        return self.get_job_id()

    @property
    def node_id(self) -> str:
        return self.get_node_id()

    @property
    def namespace(self) -> str:
        """The job's namespace of named actors (``init(namespace=...)``)."""
        return self._rt.config.namespace

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return False
