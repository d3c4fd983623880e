"""get_runtime_context(): where the calling code runs."""

from __future__ import annotations


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

    @property
    def job_id(self) -> str:
        return self.get_job_id()

    @property
    def node_id(self) -> str:
        return self.get_node_id()

    @property
    def namespace(self) -> str:
        return "default"

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return False
