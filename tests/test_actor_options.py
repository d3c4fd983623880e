"""Actor options that change what a caller or an actor sees: max_pending_calls (Ray's
backpressure error), concurrency groups, and runtime_env py_modules, in both execution
modes (issue 19)."""

from __future__ import annotations

import pytest
from test_core import job_file, run

pytestmark = pytest.mark.job


@pytest.mark.parametrize("execution", ["process", "thread"])
def test_actor_options(run_job, execution: str) -> None:
    r, _ = run(run_job, job_file("core/actor_options.py"), timeout=150,
               env={"HPCRAY_EXECUTION": execution})
    pending = r["max_pending_calls"]
    assert pending["over"] == ["err", "PendingCallsLimitExceeded"], pending
    assert pending["over_text"] and pending["again"] == ["err", "PendingCallsLimitExceeded"]
    assert pending["after"] == 2 and pending["over_one"] == ["err", "PendingCallsLimitExceeded"]
    assert pending["unlimited"] == 10
    assert pending["task"] == [[True, True], ["err", "PendingCallsLimitExceeded"]], pending
    assert pending["bad"] == [["err", "ValueError"]] * 3 and pending["subclass"]
    groups = r["concurrency_groups"]
    for kind in ("threaded", "async"):
        g = groups[kind]
        # io=2: two io calls ran together, never three, while compute and default calls ran
        assert g["during"] == 2 and g["io_max"] <= 2 and g["peak"]["io"] == 2, (kind, g)
        assert g["meanwhile"] == [True, True], (kind, g)
        assert g["four"] == [True] * 4 and g["peak"]["compute"] == 4, (kind, g)
    # each group of an async actor has its own loop: a blocked default loop stops no other
    assert groups["async"]["other_loop"] == ["ok", True], groups["async"]
    assert groups["unknown_call"] == ["err", "ValueError"], groups
    assert groups["undefined_method_group"] == ["err", "ValueError"], groups
    assert groups["in_options"] == ["err", "ValueError"], groups
    assert groups["bad"] == [["err", "ValueError"]] * 3, groups
    modules = r["py_modules"]
    assert modules["missing"] == ["err", "ValueError"] and modules["uri"] == ["err", "ValueError"]
    assert modules["not_list"] == ["err", "TypeError"], modules
    # a task that runs in its rank has no process of its own to change (thread mode): refused
    if execution == "thread":
        expected = {"task": "TaskError(ValueError)", "module_object": "TaskError(ValueError)",
                    "actor": "ActorDiedError"}
        for key, kind in expected.items():
            assert modules[key][:2] == ["err", kind], (key, modules)
            assert "HPCRAY_EXECUTION=process" in modules[key][2], (key, modules)
        return
    assert modules["task"] == ["ok", [42, "single"]], modules
    assert modules["sibling"][:2] == ["err", "TaskError(ModuleNotFoundError)"], modules
    assert modules["module_object"] == ["ok", 42], modules
    # the executors that ran them import it no more: the task's environment was undone
    assert modules["without"] == [["err", "TaskError(ModuleNotFoundError)"]] * 3, modules
    assert modules["actor"] == ["ok", [42, 42, "single"]], modules
