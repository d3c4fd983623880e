"""hpcray.rllib's math in-process: GAE, V-trace, n-step returns, PPO's loss, replay sampling,
checked against straightforward numpy references on random inputs; and the config builder."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gymnasium")
torch = pytest.importorskip("torch")

from hpcray.rllib.core.rl_module import TorchDist, np_log_softmax, np_sample
from hpcray.rllib.utils.postprocessing import compute_gae, n_step_targets, vtrace
from hpcray.rllib.utils.replay_buffers import (
    PrioritizedReplayBuffer,
    ReplayBuffer,
)


def random_rollout(rng, horizon=23, cols=5, p_done=0.15):
    rewards = rng.normal(size=(horizon, cols)).astype(np.float32)
    values = rng.normal(size=(horizon, cols)).astype(np.float32)
    terms = rng.random((horizon, cols)) < p_done
    truncs = (rng.random((horizon, cols)) < p_done / 2) & ~terms
    next_values = rng.normal(size=(horizon, cols)).astype(np.float32) * ~terms
    return rewards, values, next_values, terms, truncs


@pytest.mark.parametrize("seed", range(5))
def test_gae_matches_the_sum_of_discounted_td_errors(seed):
    rng = np.random.default_rng(seed)
    rewards, values, next_values, terms, truncs = random_rollout(rng)
    dones = terms | truncs
    gamma, lam = 0.97, float(rng.uniform(0.5, 1.0))
    adv, targets = compute_gae(rewards, values, next_values, dones, gamma, lam)
    horizon, cols = rewards.shape
    for i in range(cols):
        for t in range(horizon):
            total, scale = 0.0, 1.0
            for s in range(t, horizon):
                delta = rewards[s, i] + gamma * next_values[s, i] - values[s, i]
                total += scale * delta
                if dones[s, i]:
                    break
                scale *= gamma * lam
            assert adv[t, i] == pytest.approx(total, rel=1e-4, abs=1e-4)
    np.testing.assert_allclose(targets, adv + values, rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_vtrace_matches_the_papers_sum(seed):
    rng = np.random.default_rng(seed)
    rewards, values, next_values, terms, truncs = random_rollout(rng)
    dones = terms | truncs
    behaviour = rng.normal(size=rewards.shape).astype(np.float32) - 1
    target = behaviour + rng.normal(scale=0.5, size=rewards.shape).astype(np.float32)
    gamma, rho_bar, c_bar = 0.95, 1.0, 0.9
    vs, pg = vtrace(behaviour, target, rewards, values, next_values, dones, gamma,
                    clip_rho=rho_bar, clip_c=c_bar, clip_pg_rho=rho_bar)
    ratio = np.exp(target.astype(np.float64) - behaviour)
    horizon, cols = rewards.shape
    ref = np.zeros_like(values, dtype=np.float64)
    for i in range(cols):
        for t in range(horizon):
            total, scale = 0.0, 1.0
            for s in range(t, horizon):
                delta = min(rho_bar, ratio[s, i]) * (
                    rewards[s, i] + gamma * next_values[s, i] - values[s, i])
                total += scale * delta
                if dones[s, i]:
                    break
                scale *= gamma * min(c_bar, ratio[s, i])
            ref[t, i] = values[t, i] + total
    np.testing.assert_allclose(vs, ref, rtol=1e-4, atol=1e-4)
    for i in range(cols):
        for t in range(horizon):
            nxt = next_values[t, i] if dones[t, i] or t == horizon - 1 else ref[t + 1, i]
            want = min(rho_bar, ratio[t, i]) * (rewards[t, i] + gamma * nxt - values[t, i])
            assert pg[t, i] == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_vtrace_on_policy_is_the_lambda_one_return():
    rng = np.random.default_rng(3)
    rewards, values, next_values, terms, truncs = random_rollout(rng)
    dones = terms | truncs
    logp = rng.normal(size=rewards.shape).astype(np.float32)
    vs, _ = vtrace(logp, logp, rewards, values, next_values, dones, 0.9)
    _, targets = compute_gae(rewards, values, next_values, dones, 0.9, 1.0)
    np.testing.assert_allclose(vs, targets, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [1, 3])
def test_n_step_targets(seed, n):
    rng = np.random.default_rng(seed)
    rewards, _, _, terms, truncs = random_rollout(rng, horizon=17, cols=4, p_done=0.25)
    dones = terms | truncs
    gamma = 0.9
    ret, nxt, term, disc = n_step_targets(rewards, terms, dones, n, gamma)
    for i in range(4):
        for t in range(17):
            total, k = 0.0, 0
            terminated = False
            while k < n and t + k < 17:
                total += gamma ** k * rewards[t + k, i]
                terminated = bool(terms[t + k, i])
                k += 1
                if dones[t + k - 1, i]:
                    break
            assert ret[t, i] == pytest.approx(total, rel=1e-5, abs=1e-5)
            assert nxt[t, i] == t + k - 1
            assert term[t, i] == terminated
            assert disc[t, i] == pytest.approx(gamma ** k)


def test_categorical_and_gaussian_distributions_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)).astype(np.float32)
    actions = rng.integers(0, 4, 50)
    d = TorchDist(torch.from_numpy(logits), True)
    np.testing.assert_allclose(d.logp(torch.from_numpy(actions)).numpy(),
                               np_log_softmax(logits)[np.arange(50), actions], rtol=1e-5)
    p = np.exp(np_log_softmax(logits.astype(np.float64)))
    np.testing.assert_allclose(d.entropy().numpy(), -(p * np.log(p)).sum(-1), rtol=1e-5)
    other = rng.normal(size=(50, 4)).astype(np.float32)
    q = np.exp(np_log_softmax(other.astype(np.float64)))
    kl = d.kl(TorchDist(torch.from_numpy(other), True)).numpy()
    np.testing.assert_allclose(kl, (p * (np.log(p) - np.log(q))).sum(-1), rtol=1e-4, atol=1e-6)
    # sampled frequencies follow the probabilities
    big = np.repeat(logits[:1], 20000, axis=0)
    sampled, logp = np_sample(big, True, np.random.default_rng(1), True)
    np.testing.assert_allclose(np.bincount(sampled, minlength=4) / 20000, p[0], atol=0.015)
    np.testing.assert_allclose(logp, np.log(p[0])[sampled], rtol=1e-5)
    # gaussian: log density against the closed form
    inputs = rng.normal(size=(50, 6)).astype(np.float32)
    mean, log_std = inputs[:, :3], inputs[:, 3:]
    acts = rng.normal(size=(50, 3)).astype(np.float32)
    want = (-0.5 * ((acts - mean) / np.exp(log_std)) ** 2 - log_std
            - 0.5 * np.log(2 * np.pi)).sum(-1)
    got = TorchDist(torch.from_numpy(inputs), False).logp(torch.from_numpy(acts)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    a, lp = np_sample(inputs, False, np.random.default_rng(2), True)
    np.testing.assert_allclose(
        lp, TorchDist(torch.from_numpy(inputs), False).logp(torch.from_numpy(a)).numpy(),
        rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_ppo_loss_matches_numpy(seed):
    from hpcray.rllib.algorithms.ppo import PPOConfig
    from hpcray.rllib.algorithms.ppo.ppo import ppo_losses, update_kl_coeff

    rng = np.random.default_rng(seed)
    cfg = PPOConfig().training(clip_param=0.2, vf_clip_param=4.0, entropy_coeff=0.01,
                               vf_loss_coeff=0.5, kl_coeff=0.3)
    b = 64
    new_logits = rng.normal(size=(b, 3))
    old_logits = new_logits + rng.normal(scale=0.3, size=(b, 3))
    actions = rng.integers(0, 3, b)
    adv = rng.normal(size=b)
    vf = rng.normal(size=b) * 3
    targets = rng.normal(size=b) * 3
    old_lp_all = np_log_softmax(old_logits)
    new_lp_all = np_log_softmax(new_logits)
    old_logp = old_lp_all[np.arange(b), actions]
    batch = {"actions": torch.from_numpy(actions), "action_logp": torch.from_numpy(old_logp),
             "advantages": torch.from_numpy(adv), "value_targets": torch.from_numpy(targets)}
    out = ppo_losses(cfg, TorchDist(torch.from_numpy(new_logits), True),
                     TorchDist(torch.from_numpy(old_logits), True), torch.from_numpy(vf),
                     batch, kl_coeff=0.3)
    ratio = np.exp(new_lp_all[np.arange(b), actions] - old_logp)
    surr = np.minimum(adv * ratio, adv * np.clip(ratio, 0.8, 1.2))
    vf_loss = np.clip((vf - targets) ** 2, 0, 4.0)
    p_new, p_old = np.exp(new_lp_all), np.exp(old_lp_all)
    entropy = -(p_new * new_lp_all).sum(-1).mean()
    kl = (p_old * (old_lp_all - new_lp_all)).sum(-1).mean()
    total = -surr.mean() + 0.5 * vf_loss.mean() - 0.01 * entropy + 0.3 * kl
    assert float(out["total_loss"]) == pytest.approx(total, rel=1e-6)
    assert float(out["mean_kl_loss"]) == pytest.approx(kl, rel=1e-6)
    assert update_kl_coeff(0.2, 0.05, 0.01) == pytest.approx(0.3)
    assert update_kl_coeff(0.2, 0.001, 0.01) == pytest.approx(0.1)
    assert update_kl_coeff(0.2, 0.01, 0.01) == 0.2


def test_replay_buffer_ring_and_uniform_sampling():
    buf = ReplayBuffer(capacity=10, seed=0)
    buf.add({"x": np.arange(7), "y": np.arange(7) * 2.0})
    buf.add({"x": np.arange(7, 14), "y": np.arange(7, 14) * 2.0})
    assert len(buf) == 10
    assert sorted(buf.columns["x"].tolist()) == list(range(4, 14))
    s = buf.sample(1000)
    assert set(s["x"].tolist()) == set(range(4, 14))
    np.testing.assert_array_equal(s["y"], s["x"] * 2.0)
    counts = np.bincount(s["x"] - 4, minlength=10)
    assert counts.min() > 50


@pytest.mark.parametrize("seed", range(4))
def test_prioritized_replay_matches_numpy_cumsum(seed):
    rng = np.random.default_rng(seed)
    cap = int(rng.integers(5, 40))
    buf = PrioritizedReplayBuffer(capacity=cap, alpha=0.7, beta=0.5, seed=seed)
    n = int(rng.integers(3, 2 * cap))
    buf.add({"x": np.arange(n)})
    size = min(n, cap)
    slots = rng.choice(size, size=size, replace=False)
    prios = rng.uniform(0.1, 5.0, size)
    buf.update_priorities(slots, prios)
    p = np.zeros(size)
    p[slots] = (prios + 1e-6) ** 0.7
    ref_rng = np.random.default_rng(seed)
    ref_rng.bit_generator.state = buf.rng.bit_generator.state
    s = buf.sample(64)
    mass = ref_rng.random(64) * p.sum()
    idx = np.searchsorted(np.cumsum(p), mass, side="right")
    np.testing.assert_array_equal(s["batch_indexes"], idx)
    probs = p / p.sum()
    w = (probs[idx] * size) ** -0.5 / (probs.min() * size) ** -0.5
    np.testing.assert_allclose(s["weights"], w, rtol=1e-5)
    np.testing.assert_array_equal(s["x"], buf.columns["x"][idx])


def test_config_builders_dict_round_trip_and_errors():
    from hpcray.rllib.algorithms.ppo import PPO, PPOConfig

    cfg = (PPOConfig().environment("CartPole-v1", env_config={"a": 1})
           .env_runners(num_env_runners=2, num_envs_per_env_runner=8)
           .learners(num_learners=0).training(lr=3e-4, clip_param=0.2, num_epochs=4)
           .rl_module(model_config={"fcnet_hiddens": [32]}).debugging(seed=5))
    d = cfg.to_dict()
    assert d["lr"] == 3e-4 and d["clip_param"] == 0.2 and d["num_envs_per_env_runner"] == 8
    assert dict(cfg)["seed"] == 5 and cfg["model_config"] == {"fcnet_hiddens": [32]}
    assert "gamma" not in dict(cfg) and "lr" in dict(cfg)
    assert PPOConfig().update_from_dict(dict(cfg)).to_dict() == d
    other = PPOConfig().update_from_dict(d)
    assert other.to_dict() == d
    c2 = cfg.copy()
    c2.training(lr=1.0)
    assert cfg.lr == 3e-4
    assert cfg.algo_class is PPO
    assert cfg.get_rollout_fragment_length() == 4000 // 16 + (4000 % 16 > 0)
    with pytest.raises(TypeError, match="known"):
        cfg.training(no_such_option=1)
    with pytest.raises(TypeError, match="known"):
        cfg.env_runners(lr=1)
    with pytest.raises(ValueError, match="environment"):
        PPOConfig().validate()


def test_every_runner_and_env_gets_its_own_seed():
    from hpcray.rllib.env.env_runner import derived_seeds

    seeds = [s for runner in range(4) for s in derived_seeds(7, runner, 8)[0]]
    assert len(set(seeds)) == 32
    assert derived_seeds(7, 2, 8)[0] == derived_seeds(7, 2, 8)[0]
    assert derived_seeds(7, 2, 8)[0] != derived_seeds(8, 2, 8)[0]
    assert derived_seeds(None, 2, 8)[0] is None


def test_env_runner_fragments_repeat_per_seed_and_bootstrap_from_final_obs():
    from hpcray.rllib.algorithms.dqn import DQNConfig
    from hpcray.rllib.env.env_runner import EnvRunner

    cfg = DQNConfig().environment("CartPole-v1").env_runners(num_envs_per_env_runner=3)
    cfg.debugging(seed=3)

    def fragment(index):
        runner = EnvRunner(cfg, index)
        module = cfg.algo_class.build_module(cfg, runner.single_observation_space,
                                             runner.single_action_space, seed=0)
        runner.set_weights(module.state_dict(), 1)
        return runner.sample(num_steps=60, options={"epsilon": 1.0})

    a, b, c = fragment(1), fragment(1), fragment(2)
    for key in a["transitions"]:
        np.testing.assert_array_equal(a["transitions"][key], b["transitions"][key])
    assert not np.array_equal(a["transitions"]["obs"], c["transitions"]["obs"])
    t = a["transitions"]
    obs, nxt = t["obs"].reshape(60, 3, 4), t["next_obs"].reshape(60, 3, 4)
    done = t["terminateds"].reshape(60, 3) > 0
    assert done.any() and a["episode_returns"]
    for i in range(3):
        for s in range(59):
            same = np.array_equal(nxt[s, i], obs[s + 1, i])
            assert same != done[s, i]  # after a termination the next row is a reset


def test_custom_torch_module_through_rl_module_spec_trains_in_process():
    from torch import nn

    from hpcray.rllib import RLModuleSpec
    from hpcray.rllib.algorithms.ppo import PPOConfig

    class Tiny(nn.Module):
        built = 0

        def __init__(self, observation_space, action_space, model_config):
            super().__init__()
            Tiny.built += 1
            width = model_config["width"]
            self.body = nn.Sequential(nn.Linear(4, width), nn.ReLU())
            self.logits = nn.Linear(width, action_space.n)
            self.value = nn.Linear(width, 1)

        def forward(self, obs):
            z = self.body(obs)
            return {"action_dist_inputs": self.logits(z), "vf_preds": self.value(z)[:, 0]}

    algo = (PPOConfig().environment("CartPole-v1")
            .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=2)
            .rl_module(rl_module_spec=RLModuleSpec(module_class=Tiny, model_config={"width": 8}))
            .debugging(seed=0).build_algo())
    result = algo.train()
    module = algo.get_module()
    algo.stop()
    assert isinstance(module, Tiny) and module.body[0].out_features == 8
    assert result["num_env_steps_sampled_lifetime"] == 200
    assert np.isfinite(result["learners"]["default_policy"]["total_loss"])


@pytest.mark.parametrize("n", [1, 2, 4])
def test_n_step_transitions_carry_over_fragment_ends(n):
    from hpcray.rllib.algorithms.dqn.dqn import transitions

    rng = np.random.default_rng(n)
    horizon, cols = 30, 3
    terms = rng.random((horizon, cols)) < 0.1
    truncs = (rng.random((horizon, cols)) < 0.05) & ~terms
    steps = {"obs": rng.normal(size=(horizon, cols, 2)).astype(np.float32),
             "actions": rng.integers(0, 2, (horizon, cols)),
             "rewards": rng.normal(size=(horizon, cols)).astype(np.float32),
             "terminateds": terms, "truncateds": truncs,
             "next_obs": rng.normal(size=(horizon, cols, 2)).astype(np.float32)}
    carry: dict = {}
    got = [transitions({"batch": {k: v[s:s + 5] for k, v in steps.items()}}, n, 0.9, carry)
           for s in range(0, horizon, 5)]
    rows = {k: np.concatenate([g[k] for g in got]) for k in got[0]}
    whole = transitions({"batch": steps}, n, 0.9, {})  # one fragment: the reference
    order = lambda t: np.lexsort(t["obs"].T)
    a, b = order(rows), order(whole)
    for key in whole:
        np.testing.assert_allclose(rows[key][a], whole[key][b], rtol=1e-6)
    # the held-back last rows of the whole run are the only ones missing from it
    assert len(whole["rewards"]) >= horizon * cols - (n - 1) * cols


def test_registered_env_and_algorithm_names_resolve_and_travel_with_the_config():
    import subprocess
    import sys

    import cloudpickle
    import gymnasium as gym

    from hpcray import tune
    from hpcray.rllib.algorithms.dqn import DQN
    from hpcray.rllib.algorithms.ppo import PPO, PPOConfig
    from hpcray.tune import registry

    saved = registry.snapshot()
    horizon = 7
    try:
        tune.register_env("short_cartpole", lambda cfg: gym.make(
            "CartPole-v1", max_episode_steps=horizon + cfg["extra"]))
        config = PPOConfig().environment("short_cartpole", env_config={"extra": 2})
        assert config.env_creator()({"extra": 2}).spec.max_episode_steps == 9
        with pytest.raises(ValueError, match="'short_cartpole'"):  # the error lists it
            PPOConfig().environment("NoSuchEnv-v0").env_creator()
        assert registry.get_trainable_cls("PPO") is PPO
        assert registry.get_trainable_cls("DQN") is DQN
        # another process, with nothing registered, makes the env from the pickled config
        blob = cloudpickle.dumps(config.copy())
    finally:
        registry._unregister_all()
        registry.install(saved)
    code = ("import pickle, sys; c = pickle.loads(sys.stdin.buffer.read()); "
            "print(c.env_creator()(c.env_config).spec.max_episode_steps)")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=False,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.decode().strip() == "9", out.stderr.decode()[-2000:]


def test_algorithm_resource_request_counts_runners_and_learners():
    from hpcray import tune
    from hpcray.rllib.algorithms.ppo import PPO, PPOConfig

    config = (PPOConfig().env_runners(num_env_runners=3, num_cpus_per_env_runner=2)
              .learners(num_learners=2, num_gpus_per_learner=1))
    assert PPO.default_resource_request(config) == [
        {"CPU": 1, "GPU": 0}, *[{"CPU": 2}] * 3, *[{"CPU": 1, "GPU": 1}] * 2]
    assert PPO.default_resource_request(dict(config)) == PPO.default_resource_request(config)
    local = PPOConfig().learners(num_gpus_per_learner=1)  # the trial's own learner
    assert PPO.default_resource_request(local) == [{"CPU": 1, "GPU": 1}]
    searched = PPOConfig().env_runners(num_env_runners=tune.choice([1, 2]))
    assert PPO.default_resource_request(searched) == [{"CPU": 1, "GPU": 0}]


def test_checkpoint_modules_load_by_rllib_path_and_infer_as_numpy_does(tmp_path):
    from pathlib import Path

    from hpcray.rllib.algorithms.ppo import PPOConfig
    from hpcray.rllib.core.rl_module import RLModule

    config = (PPOConfig().environment("CartPole-v1").env_runners(num_envs_per_env_runner=2)
              .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
              .rl_module(model_config={"fcnet_hiddens": [16]}).debugging(seed=1))
    algo = config.build_algo()
    result = algo.train()
    assert result["config"]["train_batch_size_per_learner"] == 200
    assert result["iterations_since_restore"] == 1 and result["done"] is False
    path = algo.save_to_path(str(tmp_path / "ckpt"))
    module = RLModule.from_checkpoint(
        Path(path) / "learner_group" / "learner" / "rl_module")["default_policy"]
    assert set(RLModule.from_checkpoint(path)) == {"default_policy"}
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    logits = module.forward_inference({"obs": torch.from_numpy(obs)})["action_dist_inputs"]
    assert not logits.requires_grad
    w = algo.get_module().get_state()  # numpy arrays: pi = Linear, Tanh, Linear
    ref = np.tanh(obs @ w["pi.0.weight"].T + w["pi.0.bias"]) @ w["pi.2.weight"].T + w["pi.2.bias"]
    np.testing.assert_allclose(logits.numpy(), ref, rtol=1e-5, atol=1e-6)
    # the local runner holds the same weights; foreach_* reach every runner (here: the local)
    assert algo.env_runner is algo.env_runner_group.local
    states = algo.env_runner_group.foreach_worker(lambda runner: runner.module.get_state())
    assert len(states) == 1 and all(np.array_equal(states[0][k], w[k]) for k in w)
    assert algo.env_runner_group.foreach_env_runner_with_id(lambda i, runner: i) == [0]
    with pytest.raises(FileNotFoundError, match="save_to_path"):
        RLModule.from_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="default_policy"):
        algo.get_module("other")
    algo.stop()
