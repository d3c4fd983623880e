"""A collective group member dies while the others wait in the group (issue 14, "Rank
death"): the survivors' calls fail at once with CollectiveGroupError naming the member and
why it went, not after the group timeout (600 s here, far beyond these tests' hard
timeouts), and a new group of live actors works. The job is tests/jobs/collective/
member_death.py; the rendezvous's bookkeeping is tested in-process in
tests/unit/test_collective_member_gone.py."""

from __future__ import annotations

import json
import re
import sys

import pytest
from conftest import ROOT, mpiexec, run_process
from test_core import job_file
from test_rank_death import _openmpi_mpirun

pytestmark = pytest.mark.job

ADVICE = "cannot be used any more: call destroy_collective_group('g') in each surviving member"


def run_member_death(tmp_path, mode: str, launcher: str, env: dict | None = None,
                     ranks: int = 4) -> tuple:
    """Runs the job under launcher (3 members); (its RESULT, the process, what to show)."""
    from hpcray._private.job.launch import mpiexec_command

    script = tmp_path / "job.py"
    script.write_text(job_file("collective/member_death.py"))
    cmd, launch_env = mpiexec_command(ranks, [sys.executable, str(script), mode],
                                      mpiexec=launcher)
    proc = run_process(cmd, 120, env={**launch_env, "HPCRAY_COLLECTIVE_TIMEOUT": "600",
                                      **(env or {})}, cwd=str(tmp_path))
    out = f"exit status {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert len(lines) == 1, out
    return json.loads(lines[0][len("RESULT "):]), proc, out


def failed_naming(outcomes: list, *texts: str) -> bool:
    return all(o[0] == "err" and o[1] == "CollectiveGroupError" and all(t in o[2] for t in texts)
               for o in outcomes)


@pytest.mark.parametrize("mpi", ["mpich", "openmpi-ulfm"])
def test_a_member_s_rank_killed_during_an_allreduce(tmp_path, mpi) -> None:
    """The third member's rank is SIGKILLed while the other two wait in an allreduce. Under
    MPICH the head finds the death by pid and tells them; under ULFM MPI reports it in
    their pending call too, and whichever comes first ends the wait. The member, restarted
    on the spare rank, forms the group again with them."""
    launcher = mpiexec() if mpi == "mpich" else _openmpi_mpirun()
    r, proc, out = run_member_death(tmp_path, "rank", launcher, ranks=5)  # a spare rank
    victim_rank, victim_pid = r["where"][2]
    assert r["joined"] == [0, 1, 2], out
    assert r["warm"] is True, out
    if mpi == "mpich":  # the head's word
        who = (f"member rank 2 (actor Member, MPI rank {victim_rank} on host ",
               f"is gone: rank {victim_rank} (pid {victim_pid} on ")
    else:  # the head's word, or MPI's where it came first
        who = ("member rank 2 (", f"MPI rank {victim_rank}", "is gone: ")
    assert failed_naming(r["waited"], "group 'g': ", *who, ADVICE), out
    assert r["later"] == r["waited"], out  # later calls: the same error
    assert r["destroyed"] == [False, False], out
    # the group forms again with the third member, restarted on the spare rank
    assert r["new"] is True and r["restarted"][0] not in [w[0] for w in r["where"]], out
    assert re.search(rf"hpcray: rank {victim_rank} \(pid {victim_pid} on .*\) died", proc.stderr)
    assert proc.returncode != 0 and "died during the job" in proc.stderr, out


def test_a_killed_member_fails_the_others_calls_and_joins(tmp_path) -> None:
    """hpcray.kill() of a member while the others wait in a barrier and a broadcast; then
    of members of groups still forming: declared with create_collective_group (killed before
    it joined), and joined with init_collective_group."""
    r, proc, out = run_member_death(tmp_path, "kill", mpiexec())
    killed = "is gone: it was killed with hpcray.kill()"
    assert failed_naming(r["waited"], "group 'g': member rank 2 (actor Member, MPI rank "
                         f"{r['where'][2][0]} on host ", killed, ADVICE), out
    assert failed_naming([r["later"]], "group 'g': member rank 2", killed, ADVICE), out
    assert r["destroyed"] == [False, False], out
    assert failed_naming(r["declared"], "group 'd': member rank 2 (actor Member on host ",
                         killed, "Group 'd' cannot form"), out
    assert failed_naming(r["joined_killed"], "group 'j': member rank 2 (actor Member, MPI rank",
                         killed, "Group 'j' cannot form"), out
    assert r["new"] is True, out
    assert failed_naming(r["restart_waited"], "group 'r': member rank 2 (actor Member",
                         "is gone: it was killed with hpcray.kill(no_restart=False)",
                         "call destroy_collective_group('r')"), out
    restarted_on, before_on = r["restart_rank"][1], r["restart_rank"][0]
    assert r["restart_new"] is True and restarted_on == before_on, out
    assert proc.returncode == 0, out


def test_a_killed_member_of_a_gpu_group(tmp_path) -> None:
    """A "nccl" group on (fake) device arrays, over tests/stand_ins' NCCL: the same, for an
    allreduce and a recv from the killed member."""
    stand_in = f"{ROOT}:{ROOT / 'tests' / 'stand_ins'}"
    r, proc, out = run_member_death(tmp_path, "gpu", mpiexec(),
                                    env={"HPCRAY_NUM_GPUS": "3", "PYTHONPATH": stand_in})
    assert "path nccl" in r["path"], out
    assert failed_naming(r["waited"], "group 'g': member rank 2 (actor Member, MPI rank",
                         "is gone: it was killed with hpcray.kill()", ADVICE), out
    assert r["destroyed"] == [False, False] and r["new"] is True, out
    assert proc.returncode == 0, out
