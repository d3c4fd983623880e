"""Ray Tune's name registry: ``register_trainable(name, trainable)`` for ``Tuner(name)`` and
``register_env(name, creator)`` for RLlib's ``.environment(name)``.

Registration happens in the driver; Tune ships a snapshot of the registry to every trial's rank
(and an algorithm's config carries its resolved env creator to its env runners), so a name
registered in the script works on every rank. RLlib's algorithm names (PPO, APPO, IMPALA, DQN,
SAC) resolve without registration; hpcray.rllib is imported only when one is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

TRAINABLE_CLASS = "trainable_class"
ENV_CREATOR = "env_creator"

# name -> (module, class): imported on first use, so hpcray.tune does not need torch
BUILTIN_TRAINABLES: dict[str, tuple[str, str]] = {
    "PPO": ("hpcray.rllib.algorithms.ppo", "PPO"),
    "APPO": ("hpcray.rllib.algorithms.appo", "APPO"),
    "IMPALA": ("hpcray.rllib.algorithms.impala", "IMPALA"),
    "DQN": ("hpcray.rllib.algorithms.dqn", "DQN"),
    "SAC": ("hpcray.rllib.algorithms.sac", "SAC"),
}

_registry: dict[str, dict[str, Any]] = {TRAINABLE_CLASS: {}, ENV_CREATOR: {}}


def register_trainable(name: str, trainable: Callable | type, warn: bool = True) -> None:
    """Registers a function trainable or a ``tune.Trainable`` class under name, for
    ``Tuner(name, ...)``. A registered name shadows a built-in algorithm name."""
    from .session import Trainable

    _check_name(name, "register_trainable")
    if isinstance(trainable, type) and not issubclass(trainable, Trainable):
        raise TypeError(f"register_trainable({name!r}, ...): a class must subclass "
                        f"tune.Trainable, got {trainable.__name__}")
    if not callable(trainable):
        raise TypeError(f"register_trainable({name!r}, ...) needs a function fn(config) or a "
                        f"tune.Trainable class, got {type(trainable).__name__}")
    _registry[TRAINABLE_CLASS][name] = trainable


def register_env(name: str, env_creator: Callable[[dict], Any]) -> None:
    """Registers ``env_creator(env_config) -> env`` under name, for RLlib's
    ``config.environment(name)`` (it shadows a gymnasium id of the same name)."""
    _check_name(name, "register_env")
    if not callable(env_creator):
        raise TypeError(f"register_env({name!r}, ...) needs a callable env_creator(env_config), "
                        f"got {type(env_creator).__name__}")
    _registry[ENV_CREATOR][name] = env_creator


def _check_name(name: Any, fn: str) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{fn}(name, ...) needs a non-empty str name, got {name!r}")


def registered_trainables() -> list[str]:
    """Every name ``Tuner(name)`` accepts: registered ones and the built-in algorithms."""
    return sorted(set(_registry[TRAINABLE_CLASS]) | set(BUILTIN_TRAINABLES))


def registered_envs() -> list[str]:
    return sorted(_registry[ENV_CREATOR])


def get_trainable_cls(name: str) -> Any:
    """The trainable registered under name, or the built-in algorithm class of that name."""
    if name in _registry[TRAINABLE_CLASS]:
        return _registry[TRAINABLE_CLASS][name]
    if name in BUILTIN_TRAINABLES:
        module, attr = BUILTIN_TRAINABLES[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise ImportError(f"the built-in trainable {name!r} is an hpcray.rllib algorithm, "
                              f"which failed to import: {exc}") from exc
    from .result import TuneError

    raise TuneError(f"unknown trainable {name!r}: known names are "
                    f"{registered_trainables()} (register yours with "
                    f"tune.register_trainable(name, trainable))")


def contains_env(name: str) -> bool:
    return name in _registry[ENV_CREATOR]


def get_env_creator(name: str) -> Callable[[dict], Any]:
    """The env creator registered under name (KeyError naming the registered ones if none)."""
    try:
        return _registry[ENV_CREATOR][name]
    except KeyError:
        raise KeyError(f"no environment registered as {name!r}; registered: "
                       f"{registered_envs()}") from None


def snapshot() -> dict[str, dict[str, Any]]:
    """A copy of every registration, for shipping to other ranks (see install)."""
    return {category: dict(entries) for category, entries in _registry.items()}


def install(snap: dict[str, dict[str, Any]] | None) -> None:
    """Adds the registrations of a snapshot (taken in the driver) to this process's registry;
    the driver's entry wins over one of the same name registered here."""
    for category, entries in (snap or {}).items():
        _registry.setdefault(category, {}).update(entries)


def _unregister_all() -> None:
    """Forgets every registration (tests)."""
    for entries in _registry.values():
        entries.clear()


__all__ = ["get_trainable_cls", "register_env", "register_trainable"]
