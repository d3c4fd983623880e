"""Return and advantage estimators on [T, N] (time, env) arrays: GAE, V-trace, n-step returns.

Conventions shared by all of them, for step t of env column i:
- ``next_values[t]`` is V(next observation): the value of the following observation, or of the
  episode's final observation when it was truncated, and 0 when it terminated;
- ``dones[t]`` is terminated or truncated: the chain of the estimator is cut there.
The last row bootstraps from ``next_values[T - 1]``.
"""

from __future__ import annotations

import numpy as np


def compute_gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray,
                dones: np.ndarray, gamma: float, lambda_: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimation; returns (advantages, value_targets)."""
    deltas = rewards + gamma * next_values - values
    keep = gamma * lambda_ * (1.0 - dones.astype(np.float32))
    adv = np.zeros_like(deltas, dtype=np.float32)
    running = np.zeros(deltas.shape[1:], dtype=np.float32)
    for t in range(deltas.shape[0] - 1, -1, -1):
        running = deltas[t] + keep[t] * running
        adv[t] = running
    return adv, (adv + values).astype(np.float32)


def vtrace(behaviour_logp: np.ndarray, target_logp: np.ndarray, rewards: np.ndarray,
           values: np.ndarray, next_values: np.ndarray, dones: np.ndarray, gamma: float,
           clip_rho: float = 1.0, clip_c: float = 1.0, clip_pg_rho: float = 1.0,
           ) -> tuple[np.ndarray, np.ndarray]:
    """V-trace targets (Espeholt et al. 2018); returns (vs, pg_advantages)."""
    ratio = np.exp(target_logp - behaviour_logp)
    rho = np.minimum(clip_rho, ratio)
    c = np.minimum(clip_c, ratio)
    deltas = rho * (rewards + gamma * next_values - values)
    cont = 1.0 - dones.astype(np.float32)
    vs = np.zeros_like(values, dtype=np.float32)
    vs_next = next_values.astype(np.float32)  # the bootstrap where the chain is cut
    acc = np.zeros(values.shape[1:], dtype=np.float32)  # vs[t+1] - V(x[t+1]) of the next row
    for t in range(values.shape[0] - 1, -1, -1):
        if t + 1 < values.shape[0]:
            vs_next[t] = np.where(cont[t] > 0, vs[t + 1], next_values[t])
        acc = deltas[t] + gamma * c[t] * cont[t] * acc
        vs[t] = values[t] + acc
    pg_adv = np.minimum(clip_pg_rho, ratio) * (rewards + gamma * vs_next - values)
    return vs, pg_adv.astype(np.float32)


def n_step_targets(rewards: np.ndarray, terminateds: np.ndarray, dones: np.ndarray, n: int,
                   gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n-step returns within a fragment, for each step t of each column.

    Returns (returns, next_index, terminated, discount): the discounted sum of up to n rewards
    (fewer where the episode or the fragment ends first), the row whose next observation the
    target bootstraps from, whether the episode terminated in between (no bootstrap), and
    gamma ** (number of rewards summed).
    """
    horizon, cols = rewards.shape
    returns = np.zeros((horizon, cols), dtype=np.float32)
    next_index = np.zeros((horizon, cols), dtype=np.int64)
    terminated = np.zeros((horizon, cols), dtype=np.float32)
    discount = np.zeros((horizon, cols), dtype=np.float32)
    for t in range(horizon):
        acc = np.zeros(cols, dtype=np.float64)
        open_ = np.ones(cols, dtype=bool)
        scale = np.ones(cols, dtype=np.float64)
        last = np.full(cols, t, dtype=np.int64)
        for k in range(min(n, horizon - t)):
            acc += np.where(open_, scale * rewards[t + k], 0.0)
            last = np.where(open_, t + k, last)
            terminated[t] = np.where(open_, terminateds[t + k], terminated[t])
            scale = np.where(open_, scale * gamma, scale)
            open_ &= ~dones[t + k].astype(bool)
        returns[t], next_index[t], discount[t] = acc, last, scale
    return returns, next_index, terminated, discount
