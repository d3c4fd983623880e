"""Fixtures for the Ray conformance port: pytest is the driver of a real hpcray job.

Run as ``mpiexec -n 1 python -m pytest tests/conformance`` (see tests/test_conformance.py);
``init(num_cpus=2)`` then spawns the worker ranks, and init/shutdown repeat in one process.
The modules are only collected when ``HPCRAY_CONFORMANCE=1`` (the runner sets it), so the
main suite does not run them in its own process. Worker ranks import these modules by
name (``conformance.test_wait``, as Ray's workers do), so tests/ must be on the job's PYTHONPATH.
"""

from __future__ import annotations

import os

import pytest

import hpcray as ray

if os.environ.get("HPCRAY_CONFORMANCE") != "1":
    collect_ignore_glob = ["test_*.py"]

NUM_CPUS = 2


def _start(**kwargs):
    if ray.is_initialized():  # a test that failed mid-way must not break the next one
        ray.shutdown()
    kwargs.setdefault("num_cpus", NUM_CPUS)
    return ray.init(**kwargs)


@pytest.fixture
def ray_start_regular(request):
    """A fresh session per test, as Ray's ``ray_start_regular``; ``indirect`` params are init kwargs."""
    info = _start(**getattr(request, "param", {}))
    yield info
    ray.shutdown()


@pytest.fixture(scope="module")
def _shared_session():
    info = _start()
    yield info
    ray.shutdown()


@pytest.fixture
def ray_start_regular_shared(_shared_session):
    """One session shared by a module's tests, as Ray's ``ray_start_regular_shared``."""
    if not ray.is_initialized():  # an earlier test shut it down
        _start()
    return _shared_session
