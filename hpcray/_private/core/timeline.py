"""Task events as a Chrome trace (chrome://tracing, ui.perfetto.dev): one process per rank."""

from __future__ import annotations

from . import protocol as P

CATEGORY = {P.NORMAL: "task", P.ACTOR_CREATE: "actor_creation", P.ACTOR_CALL: "actor_call"}


def trace_events(events_by_rank: dict[int, list], names: dict[int, str]) -> list[dict]:
    """Complete ("X") events in microseconds, with a process_name per rank and the
    threads numbered in order of appearance within each rank."""
    out: list[dict] = []
    for rank in sorted(events_by_rank):
        out.append({"name": "process_name", "ph": "M", "pid": rank, "tid": 0,
                    "args": {"name": names.get(rank, f"rank {rank}")}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": rank, "tid": 0,
                    "args": {"sort_index": rank}})
        threads: dict[int, int] = {}
        for name, kind, start, end, thread, task_id in events_by_rank[rank]:
            tid = threads.setdefault(thread, len(threads) + 1)
            out.append({"name": name, "cat": CATEGORY.get(kind, "task"), "ph": "X",
                        "ts": start * 1e6, "dur": max(end - start, 0.0) * 1e6, "pid": rank,
                        "tid": tid, "args": {"task_id": f"{task_id:016x}", "rank": rank}})
    return out
