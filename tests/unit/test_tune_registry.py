"""tune.register_trainable / register_env in-process: name lookup, errors naming the known
names, the snapshot Tune ships to trial ranks, and that hpcray.tune loads no hpcray.rllib."""

from __future__ import annotations

import subprocess
import sys

import cloudpickle
import pytest

from hpcray import tune
from hpcray.tune import registry


@pytest.fixture(autouse=True)
def clean_registry():
    saved = registry.snapshot()
    registry._unregister_all()
    yield
    registry._unregister_all()
    registry.install(saved)


def test_registered_function_and_class_come_back_by_name():
    def fn(config):
        tune.report({"x": config["a"]})

    class Mine(tune.Trainable):
        def step(self):
            return {"x": 1}

    tune.register_trainable("fn", fn)
    tune.register_trainable("mine", Mine)
    assert registry.get_trainable_cls("fn") is fn
    assert registry.get_trainable_cls("mine") is Mine
    assert tune.Tuner("fn").trainable is fn
    assert {"fn", "mine", "PPO", "SAC"} <= set(registry.registered_trainables())


def test_bad_registrations_raise_type_error():
    class NotTrainable:
        pass

    with pytest.raises(TypeError, match="subclass tune.Trainable"):
        tune.register_trainable("bad", NotTrainable)
    with pytest.raises(TypeError, match="function"):
        tune.register_trainable("bad", 42)
    with pytest.raises(TypeError, match="callable"):
        tune.register_env("bad", "CartPole-v1")
    with pytest.raises(TypeError, match="non-empty str"):
        tune.register_env("", lambda cfg: None)
    assert "bad" not in registry.registered_trainables() + registry.registered_envs()


def test_unknown_name_lists_the_known_ones():
    tune.register_trainable("mine", lambda config: None)
    with pytest.raises(tune.TuneError) as err:
        tune.Tuner("PPOO")
    for name in ("'PPOO'", "'mine'", "'PPO'", "'APPO'", "'IMPALA'", "'DQN'", "'SAC'"):
        assert name in str(err.value)
    tune.register_env("a", dict)
    with pytest.raises(KeyError, match=r"'b'.*\['a'\]"):
        registry.get_env_creator("b")


def test_registered_name_shadows_builtin_and_last_registration_wins():
    def first(config):
        return None

    def second(config):
        return None

    tune.register_trainable("PPO", first)
    tune.register_trainable("PPO", second)
    assert registry.get_trainable_cls("PPO") is second


def test_snapshot_travels_pickled_and_the_drivers_entry_wins():
    scale = 3
    tune.register_env("scaled", lambda cfg: cfg["v"] * scale)  # a closure: pickled by value
    tune.register_trainable("t", lambda config: None)
    blob = cloudpickle.dumps(registry.snapshot())
    registry._unregister_all()
    tune.register_env("scaled", lambda cfg: "local")
    registry.install(cloudpickle.loads(blob))
    assert registry.get_env_creator("scaled")({"v": 2}) == 6
    assert "t" in registry.registered_trainables()


def test_tune_imports_no_rllib_until_a_builtin_name_is_asked_for():
    code = ("import sys; from hpcray import tune; "
            "assert not [m for m in sys.modules if m.startswith('hpcray.rllib')]; "
            "print(len([m for m in sys.modules if m in ('torch', 'gymnasium')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr


def test_trainable_with_a_resource_request_is_sized_by_it():
    from hpcray.tune.tuner import _sized

    class Big(tune.Trainable):
        @classmethod
        def default_resource_request(cls, config):
            return [{"CPU": 1}] + [{"CPU": 2, "GPU": 1}] * config["workers"]

    sized = _sized(Big, {"workers": 3})
    assert issubclass(sized, Big) and sized.__name__ == "Big"
    assert sized._tune_resources == {"cpu": 7.0, "gpu": 3.0}
    assert sized._tune_runner_resources == {"cpu": 1.0, "gpu": 0.0}
    assert _sized(tune.with_resources(Big, {"cpu": 4}), {"workers": 3})._tune_resources == {
        "cpu": 4.0}
