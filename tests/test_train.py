"""hpcray.train: checkpoint rotation, metrics files, sharding and configs in-process; trainers
in real MPI jobs (reports, checkpoints, resume after an injected failure, error after too many
failures); the examples end to end."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_process
from test_core import run

from hpcray.train import Checkpoint, CheckpointConfig, ScalingConfig, get_context, report
from hpcray.train.checkpoint import CheckpointManager
from hpcray.train.session import shard
from hpcray.train.trainer import MetricsLog, _contexts

HAVE = {m: importlib.util.find_spec(m) is not None for m in ("torch", "sklearn", "h5py")}

# --------------------------------------------------------------------------------------------
# in-process
# --------------------------------------------------------------------------------------------


def _publish(manager: CheckpointManager, tmp_path: Path, value: int, **metrics) -> Checkpoint:
    staging = tmp_path / ".staging" / f"s{value}"
    staging.mkdir(parents=True)
    (staging / "value.txt").write_text(str(value))
    return manager.publish(str(staging), {"value": value, **metrics})


def _kept(manager: CheckpointManager) -> list[str]:
    return [(Path(c.path) / "value.txt").read_text() for c, _ in manager.best()]


def test_checkpoints_published_atomically_and_rotated_by_recency(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path), CheckpointConfig(num_to_keep=2))
    for v in range(5):
        ckpt = _publish(manager, tmp_path, v)
        assert Path(ckpt.path).name == f"checkpoint_{v + 1:06d}"
    assert _kept(manager) == ["3", "4"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint_000004", "checkpoint_000005"]
    assert not any((tmp_path / ".staging").iterdir())  # staged dirs were renamed, not copied
    assert manager.latest == Checkpoint(str(tmp_path / "checkpoint_000005"))


@pytest.mark.parametrize("order, kept", [("max", ["1", "3", "4"]), ("min", ["0", "2", "4"])])
def test_checkpoint_rotation_by_score_keeps_the_latest_too(tmp_path: Path, order: str,
                                                          kept: list[str]) -> None:
    config = CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="acc",
                              checkpoint_score_order=order)
    manager = CheckpointManager(str(tmp_path), config)
    for v, acc in enumerate([0.1, 0.9, 0.3, 0.8, 0.5]):
        _publish(manager, tmp_path, v, acc=acc)
    assert _kept(manager) == kept  # the 2 best, plus the latest


def test_checkpoint_without_score_is_dropped_first(tmp_path: Path) -> None:
    config = CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="acc",
                              checkpoint_score_order="min")
    manager = CheckpointManager(str(tmp_path), config)
    _publish(manager, tmp_path, 0, acc=0.5)
    _publish(manager, tmp_path, 1)
    _publish(manager, tmp_path, 2, acc=0.7)
    assert _kept(manager) == ["0", "2"]


def test_checkpoint_directory_helpers(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    ckpt = Checkpoint.from_directory(tmp_path / "a")
    out = ckpt.to_directory(tmp_path / "b")
    assert (Path(out) / "f").read_text() == "x"
    with ckpt.as_directory() as d:
        assert d == str(tmp_path / "a")
    with pytest.raises(ValueError, match="does not exist"):
        Checkpoint.from_directory(tmp_path / "missing")


def test_metrics_log_writes_csv_and_json_lines(tmp_path: Path) -> None:
    log = MetricsLog(str(tmp_path))
    log.add({"loss": 1.0, "it": 1})
    log.add({"loss": 0.5, "it": 2, "acc": 0.9})
    log.add({"loss": 0.25, "it": 3, "acc": 0.95})
    lines = (tmp_path / "result.json").read_text().splitlines()
    assert [json.loads(line)["it"] for line in lines] == [1, 2, 3]
    csv_lines = (tmp_path / "progress.csv").read_text().splitlines()
    assert csv_lines[0] == "loss,it,acc" and csv_lines[1] == "1.0,1," and len(csv_lines) == 4
    frame = log.dataframe()
    rows = frame.to_dict("records") if hasattr(frame, "to_dict") else frame
    assert [r["it"] for r in rows] == [1, 2, 3]


def test_shards_and_configs() -> None:
    assert shard(list(range(7)), 1, 3) == [1, 4]
    parts = shard({"x": np.arange(10), "y": np.arange(10) * 2}, 0, 2)
    assert parts["x"].tolist() == [0, 2, 4, 6, 8] and parts["y"].tolist() == [0, 4, 8, 12, 16]

    class Custom:
        def shard(self, count, index):
            return (count, index)

    assert shard(Custom(), 2, 4) == (4, 2)
    with pytest.raises(TypeError, match="cannot split"):
        shard(object(), 0, 2)
    assert ScalingConfig(num_workers=2, use_gpu=True).bundle() == {"CPU": 1.0, "GPU": 1.0}
    assert ScalingConfig(resources_per_worker={"CPU": 2, "x": 0}).bundle() == {"CPU": 2.0}
    with pytest.raises(ValueError, match="num_workers"):
        ScalingConfig(num_workers=0)
    with pytest.raises(ValueError, match="placement_strategy"):
        ScalingConfig(placement_strategy="RANDOM")
    with pytest.raises(ValueError, match="checkpoint_score_order"):
        CheckpointConfig(checkpoint_score_order="up")
    with pytest.raises(RuntimeError, match="only available inside a training loop"):
        report({"x": 1})
    with pytest.raises(RuntimeError, match="only available inside a training loop"):
        get_context()


def test_contexts_number_ranks_per_node() -> None:
    where = [("node-0", 1, "a"), ("node-1", 3, "b"), ("node-0", 2, "a"), ("node-1", 4, "b")]
    ctxs = _contexts(where, "run", "/tmp/run", 2)
    assert [(c.world_rank, c.local_rank, c.local_world_size, c.node_rank) for c in ctxs] == [
        (0, 0, 2, 0), (1, 0, 2, 1), (2, 1, 2, 0), (3, 1, 2, 1)]
    assert all(c.world_size == 4 and c.attempt == 2 for c in ctxs)


def test_torch_backend_follows_the_workers_gpus() -> None:
    from hpcray.train.torch.trainer import choose_backend

    assert choose_backend(["GPU-a", "GPU-b"], cuda=True) == (
        "nccl", "each of the 2 members holds a GPU of its own")
    backend, why = choose_backend(["GPU-a", "GPU-b", "GPU-a"], cuda=True)
    assert backend == "gloo" and "workers [0, 2] share GPU GPU-a" in why
    assert choose_backend(["GPU-a", "GPU-b"], cuda=False)[0] == "gloo"
    assert choose_backend(["GPU-a", ""], cuda=True) == ("gloo", "workers [1] have no GPU")


@pytest.mark.skipif(not HAVE["h5py"], reason="h5py not installed")
def test_h5_arrays_round_trip(tmp_path: Path) -> None:
    from hpcray.train.h5 import load_arrays, save_arrays

    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((3, 4)).astype(np.float32), "step": np.array(7),
              "inner": {"b": rng.integers(0, 9, 5), "flags": np.array([True, False])}}
    save_arrays(tmp_path / "m.h5", arrays)
    back = load_arrays(tmp_path / "m.h5")
    np.testing.assert_array_equal(back["w"], arrays["w"])
    assert back["w"].dtype == np.float32 and back["step"] == 7
    np.testing.assert_array_equal(back["inner"]["b"], arrays["inner"]["b"])
    np.testing.assert_array_equal(back["inner"]["flags"], arrays["inner"]["flags"])
    with pytest.raises(ValueError, match="without '/'"):
        save_arrays(tmp_path / "bad.h5", {"a/b": np.zeros(1)})


# --------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------

TRAINER_JOB = '''
import tempfile
import numpy as np
import hpcray.collective as col
from hpcray import train
from hpcray.train import (Checkpoint, CheckpointConfig, DataParallelTrainer, FailureConfig,
                          RunConfig, ScalingConfig, TrainingFailedError, UserCallback)

hpcray.init()
STORAGE = sys.argv[1]
R = {}


def loop(config):
    ctx = train.get_context()
    data = train.get_dataset_shard("train")
    ckpt = train.get_checkpoint()
    step = 0
    if ckpt is not None:
        with open(os.path.join(ckpt.path, "step.txt")) as f:
            step = int(f.read()) + 1
    while step < config["steps"]:
        if step == config["fail_at"] and ckpt is None and ctx.world_rank == 1:
            raise ValueError(f"injected at step {step}")
        total = np.array([float(sum(data)) * (step + 1)])
        col.allreduce(total)
        metrics = {"step": step, "total": float(total[0]), "rank": ctx.world_rank,
                   "ctx": [ctx.world_rank, ctx.world_size, ctx.local_rank, ctx.node_rank,
                           ctx.attempt], "shard": list(data), "resumed": ckpt is not None}
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "step.txt"), "w") as f:
                f.write(str(step))
            with open(os.path.join(tmp, f"rank{ctx.world_rank}.txt"), "w") as f:
                f.write("x")
            train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        step += 1


class Seen(UserCallback):
    """Every report the driver published: (step, checkpoint folder)."""

    def __init__(self):
        self.reports = []

    def after_report(self, metrics, checkpoint):
        self.reports.append([metrics["step"], os.path.basename(checkpoint.path)])


seen = Seen()


def trainer(name, fail_at, max_failures, steps=6):
    return DataParallelTrainer(
        loop, train_loop_config={"steps": steps, "fail_at": fail_at},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name=name, storage_path=STORAGE,
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=max_failures),
                             callbacks=[seen] if name == "resume" else []),
        datasets={"train": list(range(10))})


result = trainer("resume", 3, 1).fit()
R["metrics"] = result.metrics
R["path"] = result.path
R["checkpoint"] = os.path.basename(result.checkpoint.path)
R["checkpoint_files"] = sorted(os.listdir(result.checkpoint.path))
R["kept"] = sorted(os.path.basename(c.path) for c, _ in result.best_checkpoints)
R["on_disk"] = sorted(p for p in os.listdir(result.path) if p.startswith("checkpoint_"))
rows = result.metrics_dataframe
rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
R["rows"] = [[r["step"], r["attempt"], r["training_iteration"], r["total"], r["resumed"]]
             for r in rows]
R["error"] = result.error
R["seen"] = seen.reports
try:
    trainer("fails", 2, 0).fit()
    R["fails"] = None
except TrainingFailedError as exc:
    R["fails"] = [str(exc), exc.result.metrics["step"] if exc.result.metrics else None,
                  os.path.basename(exc.result.checkpoint.path)]
big = DataParallelTrainer(loop, train_loop_config={"steps": 1, "fail_at": -1},
                          scaling_config=ScalingConfig(num_workers=5),
                          run_config=RunConfig(name="big", storage_path=STORAGE))
R["infeasible"] = outcome(big.fit)
emit(R)
'''


def test_data_parallel_trainer_resumes_and_rotates(run_job, tmp_path: Path) -> None:
    r, proc = run(run_job, TRAINER_JOB, n=3, args=[str(tmp_path)], timeout=180)
    m = r["metrics"]
    assert m["step"] == 5 and m["ctx"] == [0, 2, 0, 0, 1] and m["resumed"] is True
    assert m["shard"] == [0, 2, 4, 6, 8]
    assert r["checkpoint"] == "checkpoint_000006" and r["error"] is None
    assert r["checkpoint_files"] == ["rank0.txt", "rank1.txt", "step.txt"]
    assert r["kept"] == r["on_disk"] == ["checkpoint_000005", "checkpoint_000006"]
    # steps 0-2 on the first attempt, the failure at step 3, then 3-5 resumed from step 2
    assert [row[:3] for row in r["rows"]] == [
        [0, 0, 1], [1, 0, 2], [2, 0, 3], [3, 1, 4], [4, 1, 5], [5, 1, 6]]
    assert [row[3] for row in r["rows"]] == [45.0 * (s + 1) for s in range(6)]
    assert [row[4] for row in r["rows"]] == [False] * 3 + [True] * 3
    assert r["seen"] == [[s, f"checkpoint_{s + 1:06d}"] for s in range(6)]  # UserCallback
    run_dir = Path(r["path"])
    assert len((run_dir / "result.json").read_text().splitlines()) == 6
    assert len((run_dir / "progress.csv").read_text().splitlines()) == 7
    assert "[resume] worker 1 (MPI rank" in proc.stdout and "restarting from" in proc.stdout
    assert "[resume] iteration 6: step=5" in proc.stdout
    msg, step, ckpt = r["fails"]
    assert "worker 1 (MPI rank" in msg and "injected at step 2" in msg, msg
    assert "max_failures=0" in msg and step == 1 and ckpt == "checkpoint_000002"
    infeasible = r["infeasible"]
    assert infeasible[:2] == ["err", "TrainingFailedError"], infeasible
    assert "need 5 CPU; the whole job has 2 CPU" in infeasible[2], infeasible


def _example(name: str, args: list[str], timeout: float) -> dict:
    proc = run_process([sys.executable, str(ROOT / "examples" / name), *args, "--quiet"],
                       timeout, cwd=str(ROOT))
    detail = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, detail
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, detail
    return ast.literal_eval(lines[0][len("RESULT "):])


@pytest.mark.skipif(not (HAVE["sklearn"] and HAVE["h5py"]), reason="needs scikit-learn, h5py")
def test_numpy_logreg_example(tmp_path: Path) -> None:
    r = _example("train_numpy_logreg.py", ["--epochs", "200", "--fail-at", "60",
                                           "--storage", str(tmp_path)], 240)
    assert r["accuracy"] >= 0.95 and r["attempts"] == 2
    assert r["checkpoints"] == ["checkpoint_000019", "checkpoint_000020"]


@pytest.mark.skipif(not (HAVE["sklearn"] and HAVE["h5py"]), reason="needs scikit-learn, h5py")
def test_tune_trainer_example(tmp_path: Path) -> None:
    """examples/tune_trainer.py: ASHA over the logreg trainer above, 2 trainers at a time;
    the trainers it stops are aborted in their allreduce (the job still ends cleanly)."""
    r = _example("tune_trainer.py", ["--storage", str(tmp_path)], 240)
    assert r["errors"] == 0 and r["accuracy"] >= 0.9, r
    assert r["epochs"][-1] == 60 and r["epochs"][0] == 10, r  # the best ran on; ASHA stopped some


@pytest.mark.skipif(not (HAVE["torch"] and HAVE["sklearn"]), reason="needs torch, scikit-learn")
def test_torch_digits_example_resumes_after_failure(tmp_path: Path) -> None:
    r = _example("train_digits.py", ["--epochs", "15", "--fail-at", "5",
                                     "--storage", str(tmp_path)], 300)
    assert r["accuracy"] >= 0.95 and r["attempts"] == 2 and r["epochs"] == 15
    # the 2 best by test accuracy, and the latest (the 15th) if it is not among them
    assert r["checkpoints"][-1] == "checkpoint_000015" and len(r["checkpoints"]) in (2, 3)
    assert os.path.isdir(tmp_path / "digits")


# shared with tests/gpu: TorchTrainer with use_gpu=True, two workers on one GPU
TORCH_GPU_JOB = '''
import torch
import torch.distributed as dist
from hpcray import train
from hpcray.train import RunConfig, ScalingConfig
from hpcray.train.torch import TorchTrainer, get_device, prepare_model

hpcray.init()
STORAGE = sys.argv[1]


def loop(config):
    ctx = train.get_context()
    torch.manual_seed(0)
    model = prepare_model(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(ctx.get_world_rank())  # each worker its own data
    for step in range(config["steps"]):
        x = torch.randn(32, 8, generator=data).to(get_device())
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        train.report({"step": step, "loss": float(loss)})
    weights = model.module.weight if hasattr(model, "module") else model.weight
    seen = {"device": str(weights.device), "backend": dist.get_backend(),
            "gpu_ids": hpcray.get_gpu_ids(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "weights": weights.detach().cpu().reshape(-1).tolist()}
    with open(os.path.join(ctx.get_trial_dir(), f"seen{ctx.get_world_rank()}.json"), "w") as f:
        json.dump(seen, f)


result = TorchTrainer(loop, train_loop_config={"steps": 4},
                      scaling_config=ScalingConfig(num_workers=2, use_gpu=True,
                                                   resources_per_worker={"CPU": 1, "GPU": 0.5}),
                      run_config=RunConfig(name="gpu", storage_path=STORAGE)).fit()
seen = []
for rank in range(2):
    with open(os.path.join(result.path, f"seen{rank}.json")) as f:
        seen.append(json.load(f))
emit({"steps": result.metrics["step"], "seen": seen,
      "gpus": [[g["id"], g["uuid"]] for g in hpcray.nodes()[0]["GPUs"]]})
'''


def check_torch_gpu_job(r: dict, stdout: str, device: str) -> None:
    """Both workers trained on their device over gloo, in step (DDP kept weights equal)."""
    assert r["steps"] == 3
    [[gpu_id, uuid]] = r["gpus"]
    assert "hpcray.train: torch.distributed backend 'gloo': workers [0, 1] share GPU" in stdout
    for seen in r["seen"]:
        assert seen["device"] == device and seen["backend"] == "gloo", seen
        assert seen["gpu_ids"] == [gpu_id], seen
        assert seen["visible"].split(",")[0] == (uuid or gpu_id), seen
    assert r["seen"][0]["weights"] == r["seen"][1]["weights"]
    assert len(r["seen"][0]["weights"]) == 8


@pytest.mark.skipif(not HAVE["torch"], reason="torch not installed")
def test_torch_trainer_use_gpu_on_a_shared_gpu_picks_gloo(run_job, tmp_path: Path) -> None:
    """Declared GPUs (no CUDA here): the workers share GPU 0, so gloo, on the CPU."""
    r, proc = run(run_job, TORCH_GPU_JOB, n=3, args=[str(tmp_path)], timeout=180,
                  env={"HPCRAY_NUM_GPUS": "1"})
    check_torch_gpu_job(r, proc.stdout, "cpu")
