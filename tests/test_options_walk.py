"""Every option of @remote/.options() that hpcray accepts works, or is refused with an error
that says what to do: no option is accepted and silently ignored (issue 19)."""

from __future__ import annotations

import pytest
from test_core import job_file, run

from hpcray._private.core import options as opts

pytestmark = pytest.mark.job

#: what the walk checks each option name under (an option may be checked by several entries)
CHECKS = {
    "num_cpus": ["num_cpus"], "num_gpus": ["num_gpus"], "resources": ["resources"],
    "memory": ["memory"], "accelerator_type": ["accelerator_type"],
    "scheduling_strategy": ["scheduling_strategy"], "placement_group": ["placement_group"],
    "placement_group_bundle_index": ["placement_group_bundle_index"],
    "placement_group_capture_child_tasks": ["placement_group_capture_child_tasks"],
    "label_selector": ["label_selector"], "_metadata": ["_metadata"],
    "runtime_env": ["runtime_env", "runtime_env_pip", "runtime_env_py_modules",
                    "runtime_env_py_modules_missing", "actor_runtime_env"],
    "num_returns": ["num_returns", "method_num_returns"],
    "max_retries": ["max_retries"], "retry_exceptions": ["retry_exceptions",
                                                         "method_retry_exceptions"],
    "max_calls": ["max_calls"], "name": ["name", "method_name"],
    "in_rank": ["in_rank", "actor_in_rank"], "namespace": ["namespace"],
    "lifetime": ["lifetime"], "max_concurrency": ["max_concurrency"],
    "max_restarts": ["max_restarts"], "max_task_retries": ["max_task_retries"],
    "get_if_exists": ["get_if_exists"], "max_pending_calls": ["max_pending_calls"],
    "concurrency_groups": ["concurrency_groups"], "concurrency_group": ["concurrency_group"],
}


def test_the_walk_covers_every_accepted_option() -> None:
    assert set(CHECKS) == opts.TASK | opts.ACTOR | opts.METHOD


def _refused(r: dict, name: str, *words: str) -> None:
    kind, text = r[name]
    assert kind == "ValueError" and all(w in text for w in words), (name, r[name])


def test_every_option_works_or_is_refused(run_job) -> None:
    r, _ = run(run_job, job_file("core/options_walk.py"), timeout=240,
               env={"HPCRAY_RESOURCES": '{"accelerator_type:H200": 1}'})
    for name in ("num_cpus", "resources", "memory"):
        assert r[name][0] in ("Infeasible", "InfeasibleError"), (name, r[name])
    assert r["num_gpus"][0] in ("Infeasible", "InfeasibleError") and "GPU" in r["num_gpus"][1]
    ok, infeasible = r["accelerator_type"][0], r["accelerator_type"][1]
    assert ok == "Infeasible" or ok == "InfeasibleError" and "A100" in infeasible, r
    assert r["scheduling_strategy"][0] != "ok", r["scheduling_strategy"]
    assert r["placement_group"] == ["ok", [1, 2]], r  # one bundle per worker rank
    assert r["placement_group_bundle_index"] == ["ok", True]
    _refused(r, "placement_group_capture_child_tasks", "not supported")
    _refused(r, "label_selector", "labels", "resources=")
    assert r["_metadata"] == ["ok", True]
    (with_env, without) = r["runtime_env"][1]
    assert with_env == ["set", "/tmp"] and without[0] is None and without[1] != "/tmp", r
    _refused(r, "runtime_env_pip", "pip", "job's environment")
    assert r["runtime_env_py_modules"] == ["ok", 42], r["runtime_env_py_modules"]
    _refused(r, "runtime_env_py_modules_missing", "nothere.py", "shared file system")
    assert r["actor_runtime_env"] == ["ok", "yes"]
    assert r["num_returns"] == ["ok", [1, 2]] and r["method_num_returns"] == ["ok", [1, 2]]
    assert r["max_retries"][0] == "WorkerCrashedError", r["max_retries"]
    assert r["retry_exceptions"] == ["ok", "again"]
    assert r["method_retry_exceptions"] == ["ok", "again"]
    assert r["max_calls"] == ["ok", 3]  # a new process for each call
    assert r["name"][0].startswith("TaskError") and "custom-name" in r["name"][1], r["name"]
    (in_rank, pooled) = r["in_rank"][1]
    assert in_rank[1] == in_rank[2] and pooled[1] != pooled[2], r["in_rank"]
    _, pid, rank_pid = r["actor_in_rank"][1]
    assert pid == rank_pid, r["actor_in_rank"]
    assert r["lifetime"] == ["ok", 2]  # the detached actor outlived its handle
    assert r["namespace"][0] == "ValueError"  # named in another namespace: not found here
    assert r["get_if_exists"] == ["ok", 3]  # the same actor
    assert r["max_concurrency"] == ["ok", [True, True]]
    (before, after) = r["max_restarts"][1]
    assert before[0] == 1 and after[0] == 1 and before[1] != after[1], r["max_restarts"]
    assert r["max_task_retries"] == ["ok", "again"]
    assert r["max_pending_calls"] == ["ok", ["PendingCallsLimitExceeded", True, 1]], r
    assert r["concurrency_groups"] == ["ok", [True, True]], r  # io=2: both ran at once
    assert r["concurrency_group"] == ["ok", [True, True]], r  # routed into io per call
    assert r["method_name"] == ["ok", 1]
