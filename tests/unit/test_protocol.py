"""The wire protocol: every message kind has a handler with its record's fields on the side
that receives it, every sender builds it with the right number of fields, and a head and
workers talk over the loopback transport in-process."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
from loopback_job import loopback_job

import hpcray
from hpcray._private.core import protocol as P

ROOT = Path(__file__).resolve().parents[2]
NOT_OPS = ("NORMAL", "ACTOR_CREATE", "ACTOR_CALL", "SESSION_SHIFT", "RANK_SHIFT")
OPS = {name: value for name, value in vars(P).items()
       if name.isupper() and isinstance(value, int) and name not in NOT_OPS}
BY_OP = {m.OP: m for m in P.MESSAGES}


def test_every_op_code_has_one_record() -> None:
    assert len(BY_OP) == len(P.MESSAGES), "two records share an op code"
    assert set(OPS.values()) == set(BY_OP), "an op code without a record, or the reverse"
    for record in P.MESSAGES:
        assert record.TO in (P.HEAD, P.WORKER, P.PEER), record


def _params(handler) -> tuple[list[str], dict]:
    sig = inspect.signature(handler)
    names = list(sig.parameters)[1:]  # after src
    defaults = {n: p.default for n, p in sig.parameters.items()
                if p.default is not inspect.Parameter.empty}
    return names, defaults


@pytest.mark.parametrize("side", [P.HEAD, P.WORKER])
def test_handlers_match_records(side: str) -> None:
    with loopback_job(workers=1) as head:
        runtime = head if side == P.HEAD else None
        if runtime is None:
            from hpcray._private.core.worker import WorkerRuntime
            from hpcray._private.transport.loopback import LoopbackHub

            runtime = WorkerRuntime(LoopbackHub(2).transport(1), head.config, head.ranks, "t")
        expected = {m.OP for m in P.MESSAGES if m.TO in (side, P.PEER)}
        assert set(runtime.handlers) == expected
        for op, handler in runtime.handlers.items():
            record = BY_OP[op]
            names, defaults = _params(handler)
            assert names == list(record._fields), (record.__name__, names)
            assert defaults == record._field_defaults, record.__name__


def _sent_messages() -> list[tuple[str, int, str, int]]:
    """(file, line, op name, number of fields) of every message tuple built in hpcray/."""
    found = []
    for path in (ROOT / "hpcray").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Tuple) or not node.elts:
                continue
            first = node.elts[0]
            name = (first.attr if isinstance(first, ast.Attribute) and
                    isinstance(first.value, ast.Name) and first.value.id == "P" else
                    first.id if isinstance(first, ast.Name) and first.id in OPS else None)
            if name not in OPS or any(isinstance(e, ast.Starred) for e in node.elts[1:]):
                continue
            found.append((str(path.relative_to(ROOT)), node.lineno, name, len(node.elts) - 1))
    return found


def test_senders_match_records() -> None:
    sent = _sent_messages()
    assert len({op for _, _, op, _ in sent}) >= 18, "the scan no longer finds the senders"
    for where, line, op, count in sent:
        record = BY_OP[OPS[op]]
        required = len(record._fields) - len(record._field_defaults)
        assert required <= count <= len(record._fields), (
            f"{where}:{line} sends {op} with {count} fields; {record.__name__} has "
            f"{record._fields}")


def test_a_job_over_loopback() -> None:
    """Tasks, objects passed worker to worker (inline and as buffers), actors and errors."""
    rng = np.random.default_rng(7)
    big = rng.standard_normal(300_000)  # above the inline limit: moves as an MPI-style buffer

    @hpcray.remote
    def scale(x, k):
        return x * k

    @hpcray.remote
    def fails():
        raise ValueError("boom")

    @hpcray.remote
    class Acc:
        def __init__(self):
            self.total = 0

        def add(self, k):
            self.total += k
            return self.total

    with loopback_job(workers=2):
        assert hpcray.get([scale.remote(i, 3) for i in range(20)]) == [3 * i for i in range(20)]
        ref = hpcray.put(big)
        doubled = scale.remote(ref, 2)
        quadrupled = scale.remote(doubled, 2)  # its argument lives on a worker
        np.testing.assert_array_equal(hpcray.get(quadrupled), big * 4)
        acc = Acc.remote()
        assert hpcray.get([acc.add.remote(k) for k in range(1, 6)]) == [1, 3, 6, 10, 15]
        with pytest.raises(ValueError, match="boom"):
            hpcray.get(fails.remote())
