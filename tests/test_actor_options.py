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
