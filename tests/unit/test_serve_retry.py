"""Requests caught on a dead replica: idempotent HTTP methods (GET, HEAD, OPTIONS) go once more
to another replica, the rest fail with the replica's death (RouterState, in-process)."""

from __future__ import annotations

import concurrent.futures

from hpcray.exceptions import ActorDiedError
from hpcray.serve import handle as handles
from hpcray.serve.proxy import IDEMPOTENT


class Replica:
    """Stands for a replica's actor handle: ``handle_http.remote`` gives a ref-like object."""

    def __init__(self, name: str, dead: bool = False):
        self.name, self.dead, self.calls = name, dead, 0
        self.handle_http = self

    def remote(self, *args, **kwargs):
        self.calls += 1
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self.dead:
            fut.set_exception(ActorDiedError(f"replica {self.name} died"))
        else:
            fut.set_result(f"answered by {self.name}")
        return type("Ref", (), {"future": lambda _self: fut})()


def route(method: str, dead_first: bool = True) -> tuple[list, dict]:
    state = handles.RouterState("app", "dep")
    replicas = {"a": Replica("a", dead=dead_first), "b": Replica("b")}
    state.update(1, replicas, max_ongoing=1, max_queued=10)
    outcome: list = []
    call = handles._Call("handle_http", (), {}, 1 if method in IDEMPOTENT else 0,
                         lambda value, exc: outcome.append((value, exc)))
    state.submit(call)
    return outcome, replicas


def test_idempotent_requests_are_retried_on_another_replica() -> None:
    for method in ("GET", "HEAD", "OPTIONS"):
        retried = 0
        for _ in range(20):  # the router picks the first replica at random
            outcome, replicas = route(method)
            assert len(outcome) == 1
            value, exc = outcome[0]
            assert exc is None and value == "answered by b", (method, outcome)
            assert replicas["b"].calls == 1
            retried += replicas["a"].calls
        assert retried > 0, method  # some requests did meet the dead replica first


def test_other_requests_fail_with_the_replicas_death() -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        seen = set()
        for _ in range(20):
            outcome, replicas = route(method)
            value, exc = outcome[0]
            if replicas["a"].calls:  # the router tried the dead replica
                assert isinstance(exc, ActorDiedError) and replicas["b"].calls == 0
                seen.add("died")
            else:
                assert exc is None and value == "answered by b"
                seen.add("ok")
        assert "died" in seen, method
