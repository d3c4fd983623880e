"""Every argument the API's calls besides .options() accept works or is refused with an error
that says what to do (issue 19): init(), cancel(), kill(), wait(), placement_group(), Serve's
options and HPCRAY_* settings. The walk fails when a new argument is neither checked nor
refused."""

from __future__ import annotations

import inspect
import logging

import pytest
from test_core import job_file, run

import hpcray
from hpcray._private.core import config as config_mod
from hpcray._private.core import init_options

pytestmark = pytest.mark.job

#: init()'s arguments: "job" ones are exercised by test_init_arguments_at_work (and the tests
#: it names), "refused" ones raise, with what to do, in test_init_refusals
INIT = {
    "num_cpus": "job", "resources": "job", "address": "job",
    "num_gpus": "job: test_ray_semantics", "object_store_memory": "job",
    "local_mode": "refused", "ignore_reinit_error": "job", "include_dashboard": "job",
    "dashboard_host": "warned", "job_config": "refused", "configure_logging": "refused",
    "logging_level": "refused", "log_to_driver": "job",
    "namespace": "job: test_ray_semantics", "runtime_env": "job", "_temp_dir": "refused",
    "_system_config": "refused",
}

REFUSALS = [
    ("address", "ray://head:10001", ["the MPI job is the cluster", "Drop address"]),
    ("address", "10.0.0.1:6379", ["does not connect"]),
    ("local_mode", True, ["deprecated", "HPCRAY_EXECUTION=thread"]),
    ("job_config", object(), ["runtime_env= and namespace="]),
    ("configure_logging", True, ["no Python logging"]),
    ("logging_level", logging.WARNING, ["no logger", "log_to_driver"]),
    ("_temp_dir", "/tmp/x", ["HPCRAY_STATE_DIR"]),
    ("_system_config", {"x": 1}, ["HPCRAY_*", "configuration.md"]),
    ("object_store_memory", -1, ["bytes"]),
    ("runtime_env", {"pip": ["requests"]}, ["job's environment"]),
    ("runtime_env", {"working_dir": "/no/such/dir"}, ["shared file system"]),
]


def test_the_walk_covers_every_init_argument() -> None:
    params = set(inspect.signature(hpcray.init).parameters)
    assert set(INIT) == params
    # every Ray argument init() takes goes through the settings that carry it out or refuse it
    ray_args = set(inspect.signature(init_options.settings).parameters)
    assert ray_args <= params
    assert {name for name, how in INIT.items() if how in ("refused", "warned")} <= ray_args
    assert {name for name, _, _ in REFUSALS} >= {n for n, h in INIT.items() if h == "refused"}


@pytest.mark.parametrize(("name", "value", "words"), REFUSALS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(REFUSALS)])
def test_init_refusals(name, value, words) -> None:
    with pytest.raises(ValueError) as info:
        init_options.settings(**{name: value})
    assert all(w in str(info.value) for w in words), str(info.value)


def test_init_settings() -> None:
    """What init() hands the job's Config, and its warnings."""
    assert init_options.settings() == ({}, [])
    for address in (None, "auto", "local"):
        assert init_options.settings(address=address) == ({}, [])
    overrides, warnings = init_options.settings(object_store_memory=1 << 30,
                                                include_dashboard=False, local_mode=False,
                                                configure_logging=False)
    assert overrides == {"segment_cache": 1 << 30} and warnings == []
    for kwargs in ({"include_dashboard": True}, {"dashboard_host": "0.0.0.0"}):
        assert init_options.settings(**kwargs)[1] == [init_options.NO_DASHBOARD]
    env = init_options.settings(runtime_env={"env_vars": {"A": "1"}, "working_dir": "/tmp"})
    assert env[0] == {"runtime_env": {"env_vars": {"A": "1"}, "working_dir": "/tmp"}}


def test_runtime_env_from_the_environment(monkeypatch, tmp_path) -> None:
    (tmp_path / "envmod.py").write_text("X = 1\n")
    monkeypatch.setenv("HPCRAY_RUNTIME_ENV", '{"py_modules": ["envmod.py"]}')
    monkeypatch.chdir(tmp_path)
    overrides, _ = init_options.settings(runtime_env=init_options.runtime_env_of(None))
    assert overrides["runtime_env"] == {"py_modules": [str(tmp_path / "envmod.py")]}
    assert init_options.settings(runtime_env=init_options.runtime_env_of({}))[0] == {
        "runtime_env": {}}  # init's own stands over the variable
    monkeypatch.setenv("HPCRAY_RUNTIME_ENV", "{nope")
    with pytest.raises(ValueError, match="not JSON"):
        init_options.runtime_env_of(None)


def test_runtime_env_merge_follows_ray() -> None:
    """A task's runtime_env under the job's: env_vars merge (the task's win), any other field
    of the task's replaces the job's."""
    from hpcray._private.core.options import merge_runtime_env

    job = {"env_vars": {"A": "job", "B": "job"}, "working_dir": "/j", "py_modules": ["/m"]}
    assert merge_runtime_env(job, None) == job
    assert merge_runtime_env(job, {"env_vars": {"B": "t", "C": "t"}, "py_modules": ["/o"]}) == {
        "env_vars": {"A": "job", "B": "t", "C": "t"}, "working_dir": "/j", "py_modules": ["/o"]}
    assert merge_runtime_env({"working_dir": "/j"}, {"env_vars": {"C": "t"}}) == {
        "working_dir": "/j", "env_vars": {"C": "t"}}


def test_num_cpus_under_a_launcher_must_match_its_ranks() -> None:
    init_options.num_cpus_under_launcher(None, 2, 1.0)
    init_options.num_cpus_under_launcher(4, 2, 2.0)
    with pytest.raises(ValueError, match=r"started 2 worker rank\(s\).*-n"):
        init_options.num_cpus_under_launcher(5, 2, 1.0)


def test_head_cpus_is_refused(monkeypatch) -> None:
    assert "head_cpus" not in {f.name for f in config_mod.fields(config_mod.Config)}
    monkeypatch.setenv("HPCRAY_HEAD_CPUS", "0")
    config_mod.load()
    monkeypatch.setenv("HPCRAY_HEAD_CPUS", "2")
    with pytest.raises(ValueError, match="never tasks"):
        config_mod.load()


def _job_dirs(tmp_path) -> None:
    for name in ("jobdir", "taskdir", "mods"):
        (tmp_path / name).mkdir()
    (tmp_path / "mods" / "jobmod.py").write_text('NAME = "jobmod"\n')
    (tmp_path / "mods" / "othermod.py").write_text('NAME = "othermod"\n')


@pytest.mark.parametrize("execution", ["process", "thread"])
def test_init_arguments_at_work(run_job, tmp_path, execution) -> None:
    _job_dirs(tmp_path)
    r, proc = run(run_job, job_file("core/init_walk.py"), timeout=120,
                  env={"HPCRAY_EXECUTION": execution})
    job = ["job", "job", None, "jobdir", "jobmod", None]
    assert r["task"] == ["ok", job], r
    assert r["nested"] == ["ok", job] and r["actor"] == ["ok", job], r
    assert r["in_rank"] == ["ok", job], r  # the rank's own process took the job's env
    if execution == "process":  # the task's own: env_vars merged, the rest replaced
        assert r["own"] == ["ok", ["job", "task", "own", "taskdir", None, "othermod"]], r
    else:  # a task's own runtime_env needs a process of its own
        assert r["own"][0] == "err" and "HPCRAY_EXECUTION=process" in r["own"][2], r
    assert r["after_own"] == ["ok", [job] * 3], r
    assert r["driver"] == [None, None, None, tmp_path.name, None, None]  # as Ray's driver
    assert r["segment_cache"] == ["ok", 48 << 20]
    assert r["cpus"] == 2.0 and r["widgets"] == 3.0  # resources: per worker rank
    assert r["reinit"] == ["ok", ["job_id", "node_id", "num_ranks"]], r
    assert r["reinit_refused"] == ["err", "RuntimeError"], r
    assert init_options.NO_DASHBOARD in proc.stderr
    marked = [line for line in proc.stdout.splitlines() if "walk-marker" in line]
    if execution == "process":  # log_to_driver=True: forwarded, prefixed with its rank
        assert len(marked) == 1 and "(rank=" in marked[0], proc.stdout[-3000:]
    else:  # log_to_driver=False: the rank's own stdout, which the launcher passes on as is
        assert len(marked) == 1 and "(rank=" not in marked[0], proc.stdout[-3000:]


def test_num_cpus_other_than_the_launchers_is_refused(run_job) -> None:
    proc = run_job("import hpcray\nhpcray.init(num_cpus=5)\n", n=3, timeout=60)
    assert proc.returncode != 0
    assert "init(num_cpus=5) under an MPI launcher" in proc.stderr, proc.stderr[-3000:]


#: the other calls' arguments, and where each is checked
CALLS = {
    "cancel": {"object_ref": "job", "force": "test_core", "recursive": "job"},
    "kill": {"actor": "job", "no_restart": "job"},
    "wait": {"object_refs": "job", "num_returns": "test_core", "timeout": "job",
             "fetch_local": "job"},
    "util.placement_group": {"bundles": "job", "strategy": "test_core", "name": "job",
                             "lifetime": "job"},
}


def test_the_walk_covers_the_calls_arguments() -> None:
    for name, checked in CALLS.items():
        fn = hpcray
        for part in name.split("."):
            fn = getattr(fn, part)
        assert set(checked) == set(inspect.signature(fn).parameters), name


@pytest.mark.parametrize("execution", ["process", "thread"])
def test_call_arguments_at_work(run_job, execution) -> None:
    r, _ = run(run_job, job_file("core/api_walk.py"), timeout=180,
               env={"HPCRAY_EXECUTION": execution})
    cancelled = ["err", "TaskCancelledError"]
    # recursive (Ray's default): the task's children and grandchildren are cancelled too
    assert r["cancel_recursive"] == [cancelled, [cancelled, cancelled]], r
    assert r["cancel_flat"] == [cancelled, [["ok", 1], ["ok", "grandchild"]]], r
    assert r["kill_no_restart"] == ["err", "ActorDiedError"], r
    assert r["kill_restart"] == ["ok", 1], r  # restarted: a new instance
    # fetch_local=False: ready where it was made, not copied here until asked for
    assert r["wait_fetch_local"] == ["ok", [[1, False], [1, True], 0, 1]], r
    # named: found by name, unique, gone once removed; the group a task or actor runs in
    assert r["pg_name"] == ["ok", [True, ["err", "ValueError"], [True, None, None, True],
                                   False]], r
    # lifetime None: an actor's groups end with it, the driver's and a task's with the job
    assert r["pg_lifetime"] == ["ok", [True, [True] * 3, [True, False, True]]], r


def _serve_fields() -> dict[str, list[str]]:
    from dataclasses import fields

    from hpcray.serve import config as serve_config

    return {"HTTPOptions": [f.name for f in fields(serve_config.HTTPOptions)],
            "DeploymentConfig": list(serve_config.DeploymentConfig.OPTIONS),
            "AutoscalingConfig": [f.name for f in fields(serve_config.AutoscalingConfig)]}


def test_every_serve_option_is_read() -> None:
    """No Serve option is stored and never read: each is read as an attribute somewhere in
    the package besides the methods that only check or copy them."""
    import ast
    from pathlib import Path

    import hpcray.serve

    checking = {"__post_init__", "parse", "merged", "from_options"}
    holders = {"options", "cfg", "c", "config"}  # what the code calls an options object
    read: set[str] = set()

    def visit(node: ast.AST, in_config: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in checking:
            return
        if isinstance(node, ast.Attribute):
            value = node.value
            if isinstance(value, ast.Name) and (value.id in holders or
                                                in_config and value.id == "self") or \
                    isinstance(value, ast.Attribute) and value.attr in holders:
                read.add(node.attr)
        for child in ast.iter_child_nodes(node):
            visit(child, in_config)

    for path in Path(hpcray.serve.__file__).parent.glob("*.py"):
        visit(ast.parse(path.read_text()), path.name == "config.py")
    for owner, names in _serve_fields().items():
        for name in names:
            assert name in read, f"{owner}.{name} is never read"


def test_deployment_actor_options_are_checked_when_defined() -> None:
    pytest.importorskip("starlette")
    from hpcray import serve

    with pytest.raises(ValueError, match="job's environment"):
        serve.deployment(ray_actor_options={"runtime_env": {"pip": ["x"]}})
    with pytest.raises(ValueError, match="unsupported key"):
        serve.deployment(ray_actor_options={"max_restarts": 2})
    with pytest.raises(ValueError, match="root_path"):
        serve.HTTPOptions(root_path="outer/")


def test_serve_options_at_work(run_job) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    r, _ = run(run_job, job_file("serve/options_walk.py"), timeout=180)
    # routed as it came (a proxy in front stripped the prefix); the app sees the prefix
    assert r["stripped"] == [200, {"var": "set", "path": "/outer/app/x",
                                   "root_path": "/outer/app"}], r
    assert r["unstripped"][0] == 404, r
