"""RLlib benchmark: hpcray.rllib vs RLlib 2.60 on the same box, same seeds, side by side.

    python benchmarks/rllib.py                       # everything, 3 seeds / rounds
    python benchmarks/rllib.py --only sample --rounds 5
    python benchmarks/rllib.py --ray-python ''       # hpcray only

The parent imports neither system. Each measurement is a child process,
``python benchmarks/rllib.py --internal {hpcray,ray} {ppo450,sample,restore,gym} [seed]``, run
with this interpreter (hpcray) or ``--ray-python`` (Ray); the two systems alternate round by
round (and which goes first alternates too). The child's script is the same RLlib code for both:
only the import differs.

- ppo450: PPO on CartPole-v1 (2 env runners x 4 envs, lr 3e-4, train_batch_size_per_learner
  2000, minibatch 250, 8 epochs, default [256, 256] networks) until the mean evaluation return
  (10 greedy episodes after every iteration) reaches 450, at most 60 iterations; wall time of
  the whole child process (start-up, init, build, training, evaluation), one seed per round.
- sample: env steps/s of the env runners alone (2 runners x 8 envs, 250 steps per env per
  call, policy in the loop, exploration on), 5 timed calls after one warm-up.
- gym: gymnasium's SyncVectorEnv of 8 CartPoles stepping random actions in one process, no
  policy, no runtime: the limit one runner could reach.
- restore: save_to_path + restore_from_path of the ppo450 algorithm after one iteration.
- dqn450 / sac250 (only with --only): DQN on CartPole-v1 to a training return of 450, SAC on
  Pendulum-v1 to -250, one local env runner; wall time of the whole child process. A run stops
  unreached after BENCH_MAX_ITERS iterations or --max-s seconds (default 600) and is reported
  as "not reached in X s", with the best return it had.

Every run prints the 1-minute load average before and after it (the box is shared).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

T_START = time.perf_counter()
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RAY_PYTHON = "/work/rayvenv/bin/python"
TAG = "RLLIB_BENCH "


def ppo_config(system: str, seed: int, num_envs: int = 4, fragment: int | str = "auto",
               batch: int = 2000):
    if system == "hpcray":
        from hpcray.rllib.algorithms.ppo import PPOConfig
    else:
        from ray.rllib.algorithms.ppo import PPOConfig
    return (PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=2, num_envs_per_env_runner=num_envs,
                         rollout_fragment_length=fragment)
            .training(lr=3e-4, train_batch_size_per_learner=batch, minibatch_size=250,
                      num_epochs=8)
            .debugging(seed=seed))


def start(system: str) -> None:
    if system == "hpcray":
        import hpcray

        hpcray.init(num_cpus=2)
    else:
        import ray

        # address="local": a fresh cluster of our own; 4 logical CPUs: 2 runners, the
        # evaluation runner and the driver (RLlib reserves one each)
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)


def internal(system: str, mode: str, seed: int) -> dict:
    if mode == "gym":
        import gymnasium as gym

        env = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 8)
        env.reset(seed=seed)
        env.action_space.seed(seed)
        actions = [env.action_space.sample() for _ in range(200)]
        t0 = time.perf_counter()
        steps = 0
        while time.perf_counter() - t0 < 3.0:
            for a in actions:
                env.step(a)
            steps += 200 * 8
        return {"steps_per_s": steps / (time.perf_counter() - t0)}
    start(system)
    if mode == "ppo450":
        t0 = time.perf_counter()
        algo = ppo_config(system, seed).evaluation(
            evaluation_interval=1, evaluation_duration=10, evaluation_duration_unit="episodes",
            evaluation_num_env_runners=1, evaluation_config={"explore": False}).build_algo()
        built = time.perf_counter() - t0
        ret, it, train_ret = 0.0, 0, 0.0
        while ret < 450 and it < 60:
            result = algo.train()
            ret = result["evaluation"]["env_runners"]["episode_return_mean"]
            train_ret = result["env_runners"]["episode_return_mean"]
            it += 1
        train_s = time.perf_counter() - t0 - built
        out = {"iterations": it, "eval_return": ret, "train_return": train_ret,
               "build_s": built, "train_s": train_s, "s_per_iteration": train_s / it}
        algo.stop()
        return out
    if mode == "sample":
        algo = ppo_config(system, seed, num_envs=8, fragment=250, batch=4000).build_algo()
        group = algo.env_runner_group

        def sample() -> int:
            if system == "hpcray":
                return sum(f["num_env_steps"] for f in group.sample(num_steps=250))
            return sum(group.foreach_env_runner(lambda r: sum(len(e) for e in r.sample()),
                                                local_env_runner=False))

        sample()
        rates = []
        for _ in range(5):
            t0 = time.perf_counter()
            n = sample()
            rates.append(n / (time.perf_counter() - t0))
        algo.stop()
        return {"steps_per_s": statistics.median(rates)}
    if mode == "restore":
        import tempfile

        algo = ppo_config(system, seed).build_algo()
        algo.train()
        saves, restores = [], []
        for _ in range(3):
            path = tempfile.mkdtemp()
            t0 = time.perf_counter()
            algo.save_to_path(path)
            t1 = time.perf_counter()
            algo.restore_from_path(path)
            restores.append(time.perf_counter() - t1)
            saves.append(t1 - t0)
        algo.stop()
        return {"save_s": statistics.median(saves), "restore_s": statistics.median(restores)}
    if mode in ("dqn450", "sac250"):
        return off_policy(system, mode, seed)
    raise ValueError(f"unknown mode {mode!r}")


def off_policy(system: str, mode: str, seed: int) -> dict:
    """DQN on CartPole-v1 to a training return of 450, or SAC on Pendulum-v1 to -250 (one
    local env runner, 1000 env steps per iteration; at most BENCH_MAX_ITERS iterations)."""
    cap = int(os.environ.get("BENCH_MAX_ITERS", "150" if mode == "dqn450" else "40"))
    max_s = float(os.environ.get("BENCH_MAX_S", "600"))
    if mode == "dqn450":
        if system == "hpcray":
            from hpcray.rllib.algorithms.dqn import DQNConfig as Config
        else:
            from ray.rllib.algorithms.dqn import DQNConfig as Config
        config = (Config().environment("CartPole-v1")
                  .training(lr=1e-3, n_step=3, epsilon=[(0, 1.0), (5000, 0.02)],
                            target_network_update_freq=500)
                  .rl_module(model_config={"fcnet_hiddens": [64], "fcnet_activation": "tanh"}))
        env, target = "CartPole-v1", 450.0
    else:
        if system == "hpcray":
            from hpcray.rllib.algorithms.sac import SACConfig as Config
        else:
            from ray.rllib.algorithms.sac import SACConfig as Config
        config = (Config().environment("Pendulum-v1")
                  .training(actor_lr=2e-4, critic_lr=8e-4, alpha_lr=9e-4, tau=0.005,
                            train_batch_size_per_learner=256,
                            num_steps_sampled_before_learning_starts=256,
                            replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer",
                                                  "capacity": 100000, "alpha": 1.0,
                                                  "beta": 0.0})
                  .rl_module(model_config={"fcnet_hiddens": [256, 256]}))
        env, target = "Pendulum-v1", -250.0
    config = (config.env_runners(num_env_runners=0, num_envs_per_env_runner=1)
              .reporting(min_sample_timesteps_per_iteration=1000).debugging(seed=seed))
    t0 = time.perf_counter()
    algo = config.build_algo()
    built = time.perf_counter() - t0
    ret, best, it, steps = float("-inf"), float("-inf"), 0, 0
    while not ret >= target and it < cap and time.perf_counter() - T_START < max_s:
        result = algo.train()
        ret = result["env_runners"]["episode_return_mean"]
        best = best if math.isnan(ret) else max(best, ret)  # NaN: no episode ended yet
        steps = result["num_env_steps_sampled_lifetime"]
        it += 1
    train_s = time.perf_counter() - t0 - built
    algo.stop()
    return {"env": env, "iterations": it, "env_steps": steps, "return": ret, "best": best,
            "reached": bool(ret >= target), "build_s": built, "train_s": train_s,
            "s_per_iteration": train_s / it}


def child(python: str, system: str, mode: str, seed: int, timeout: float) -> dict | None:
    cmd = [python, str(Path(__file__).resolve()), "--internal", system, mode, str(seed)]
    env = dict(os.environ)
    if system == "hpcray":
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    else:  # the Ray venv must not import this checkout's packages
        env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout,
                              env=env, cwd="/tmp", start_new_session=True)
    except subprocess.TimeoutExpired:
        load = [round(load0, 1), round(os.getloadavg()[0], 1)]
        print(f"  {system} {mode} seed {seed}: killed after {timeout:.0f} s (load "
              f"{load[0]} -> {load[1]})", flush=True)
        if mode in ("dqn450", "sac250"):  # shown as not reached, not left out
            return {"reached": False, "wall_s": timeout, "return": math.nan,
                    "best": math.nan, "env_steps": "?", "load": load}
        return None
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(TAG)]
    if proc.returncode != 0 or not lines:
        print(f"  {system} {mode} seed {seed}: failed (exit {proc.returncode})\n"
              f"{proc.stderr[-2000:]}", flush=True)
        return None
    out = json.loads(lines[-1][len(TAG):])
    out["wall_s"] = wall
    out["load"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
    print(f"  {system:6s} {mode:7s} seed {seed}: "
          + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in out.items()), flush=True)
    return out


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g}, "
            f"n={len(values)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--internal", nargs=3, metavar=("SYSTEM", "MODE", "SEED"))
    ap.add_argument("--ray-python", default=DEFAULT_RAY_PYTHON,
                    help="interpreter with ray[rllib] 2.60 ('' to skip Ray)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per measurement (ppo450: one "
                    "seed per round, taken in order from --seeds)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9, 10, 11])
    ap.add_argument("--only", nargs="+",
                    choices=["ppo450", "sample", "gym", "restore", "dqn450", "sac250"],
                    help="default: ppo450 sample gym restore (dqn450 and sac250 take long)")
    ap.add_argument("--max-s", type=float, default=600.0,
                    help="dqn450/sac250: a run stops unreached after this many seconds")
    args = ap.parse_args()
    os.environ["BENCH_MAX_S"] = str(args.max_s)
    if args.internal:
        system, mode, seed = args.internal
        print(TAG + json.dumps(internal(system, mode, int(seed))), flush=True)
        return
    systems = [("hpcray", sys.executable)]
    if args.ray_python:
        systems.append(("ray", args.ray_python))
    modes = args.only or ["ppo450", "sample", "gym", "restore"]
    results: dict = {}
    for mode in modes:
        print(f"== {mode}", flush=True)
        for r in range(args.rounds):
            seed = args.seeds[r % len(args.seeds)]
            order = systems if r % 2 == 0 else systems[::-1]
            for system, python in order:
                if mode == "gym" and system == "ray":
                    continue
                timeout = args.max_s + 240 if mode in ("dqn450", "sac250") else 400
                out = child(python, system, mode, seed, timeout=timeout)
                if out is not None:
                    results.setdefault((system, mode), []).append(out)
    print("\n| measurement | hpcray.rllib | RLlib 2.60 | hpcray / RLlib |")
    print("| --- | --- | --- | --- |")

    def row(label: str, mode: str, key: str, higher_better: bool) -> None:
        h = [o[key] for o in results.get(("hpcray", mode), [])]
        r = [o[key] for o in results.get(("ray", mode), [])]
        ratio = "n/a"
        if h and r:
            a, b = statistics.median(h), statistics.median(r)
            gain = a / b if higher_better else b / a
            ratio = f"{gain:.2f}x" + ("" if higher_better else " faster" if gain >= 1 else
                                      f" (hpcray takes {1 / gain:.2f}x as long)")
        print(f"| {label} | {spread(h)} | {spread(r)} | {ratio} |")

    def reach_row(label: str, mode: str) -> None:
        """Median wall time of the runs that reached the target; the others as "not reached
        in X s (best return, env steps)"; the load average around each run."""
        cells, walls = [], {}
        for system in ("hpcray", "ray"):
            runs = results.get((system, mode), [])
            hit = [o["wall_s"] for o in runs if o["reached"]]
            walls[system] = hit
            text = f"{spread(hit)} reached {len(hit)}/{len(runs)}" if runs else "n/a"
            for o in runs:
                if not o["reached"]:
                    text += (f"; not reached in {o['wall_s']:.0f} s (return {o['return']:.4g}, "
                             f"best {o['best']:.4g}, {o['env_steps']} steps)")
            text += "; load " + ", ".join(f"{a}-{b}" for a, b in (o["load"] for o in runs))
            cells.append(text)
        ratio = "n/a"
        if walls["hpcray"] and walls["ray"]:
            ratio = f"{statistics.median(walls['ray']) / statistics.median(walls['hpcray']):.2f}x"
        elif walls["hpcray"] and results.get(("ray", mode)):
            least = min(o["wall_s"] for o in results[("ray", mode)])
            ratio = f"> {least / statistics.median(walls['hpcray']):.1f}x (RLlib never reached)"
        print(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")

    if "ppo450" in modes:
        row("PPO CartPole to 450: wall s from process start", "ppo450", "wall_s", False)
        row("  of which training s (after build_algo)", "ppo450", "train_s", False)
        row("  iterations to 450", "ppo450", "iterations", False)
        row("  s per iteration (sampling, update, evaluation)", "ppo450", "s_per_iteration",
            False)
        row("  build_algo() s", "ppo450", "build_s", False)
    if "sample" in modes:
        row("sampling env steps/s, 2 runners x 8 envs", "sample", "steps_per_s", True)
    if "gym" in modes:
        row("gymnasium SyncVectorEnv(8) random actions, 1 process", "gym", "steps_per_s", True)
    for mode, label in (("dqn450", "DQN CartPole to 450"), ("sac250", "SAC Pendulum to -250")):
        if mode in modes:
            reach_row(f"{label}: wall s from process start", mode)
            row("  s per iteration (1000 env steps)", mode, "s_per_iteration", False)
    if "restore" in modes:
        row("save_to_path s", "restore", "save_s", False)
        row("restore_from_path s", "restore", "restore_s", False)


if __name__ == "__main__":
    main()
