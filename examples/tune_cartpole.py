"""An RL research sweep: REINFORCE on gymnasium's CartPole-v1, tuned with ASHA.

    pip install gymnasium
    python examples/tune_cartpole.py

The agent is a linear softmax policy in numpy trained with REINFORCE (normalised returns as the
baseline). The sweep searches the learning rate, discount and episodes per update; every
update reports the mean return of its episodes, ASHA stops weak trials early, and a trial stops
once it averages the solved return of 475.
"""

from __future__ import annotations

import numpy as np

import hpcray
from hpcray import tune

SOLVED = 475.0


def rollout(env, w: np.ndarray, rng: np.random.Generator):
    """One episode: the observations, actions and rewards."""
    obs, _ = env.reset(seed=int(rng.integers(2**31)))
    observations, actions, rewards = [], [], []
    done = False
    while not done:
        logits = obs @ w
        p = np.exp(logits - logits.max())
        p /= p.sum()
        action = int(rng.random() < p[1])
        observations.append(obs)
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        done = terminated or truncated
    return np.array(observations), np.array(actions), np.array(rewards)


def train(config: dict) -> None:
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(config["seed"])
    w = np.zeros((4, 2))
    while True:
        grad = np.zeros_like(w)
        episode_returns = []
        for _ in range(config["episodes"]):
            obs, actions, rewards = rollout(env, w, rng)
            episode_returns.append(rewards.sum())
            returns = np.zeros_like(rewards)
            running = 0.0
            for t in reversed(range(len(rewards))):
                running = rewards[t] + config["gamma"] * running
                returns[t] = running
            returns = (returns - returns.mean()) / (returns.std() + 1e-8)
            logits = obs @ w
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            dlogits = np.eye(2)[actions] - p  # d log pi(a|s) / d logits
            grad += obs.T @ (dlogits * returns[:, None])
        w += config["lr"] * grad / config["episodes"]
        tune.report({"episode_return_mean": float(np.mean(episode_returns))})


if __name__ == "__main__":
    hpcray.init()
    results = tune.Tuner(
        train,
        param_space={"lr": tune.loguniform(1e-3, 0.3), "gamma": tune.choice([0.95, 0.99, 0.995]),
                     "episodes": tune.choice([4, 8, 16]), "seed": tune.randint(0, 10_000)},
        tune_config=tune.TuneConfig(
            metric="episode_return_mean", mode="max", num_samples=16,
            scheduler=tune.ASHAScheduler(max_t=100, grace_period=10, reduction_factor=3)),
        run_config=tune.RunConfig(name="tune_cartpole", stop={"episode_return_mean": SOLVED}),
    ).fit()
    best = results.get_best_result()
    score = best.metrics["episode_return_mean"]
    print(f"best mean return {score:.1f} after {best.metrics['training_iteration']} updates "
          f"({'solved' if score >= SOLVED else 'not solved'}) with {best.config}")
