"""Stage II training, generation and their errors, on tiny stores made here."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lohp.errors import LohpError
from lohp.generation import Generator
from lohp.losses import METHODS
from lohp.training import OfflineData, train
from lohp.trajectories import TrajectoryStore, make_config, prepare

FAST = {"iterations": 4, "batch_size": 4, "log_every": 2, "eval_every": 4, "eval_tasks": 2, "checkpoint_every": 2}
POLICY = {"channels": 8, "token_size": 8, "depth": 1}


@pytest.fixture(scope="module")
def store8(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s8") / "store"
    prepare(out, make_config(family_config={"n_way": 3}, optimizers=("sgd", "adam"), tasks=4, steps=8,
                             batch_size=16, seed=1))
    return out


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_writes_its_files(method, store8, tmp_path):
    res = train(store8, tmp_path / "p", method, k=2, policy_options=POLICY, train_options=FAST)
    assert res["iteration"] == 4 and torch.isfinite(torch.tensor(res["loss"]))
    for name in ("policy.json", "policy.safetensors", "checkpoint.safetensors", "log.csv", "curves.png"):
        assert (tmp_path / "p" / name).exists(), name
    meta = json.loads((tmp_path / "p" / "policy.json").read_text())
    assert meta["n_steps"] == (1 if method == "hypernetwork" else 4)
    gen = Generator.load(tmp_path / "p")
    task = gen.family().sample(0, "heldout")
    assert gen.generate(task).theta.shape == (task.layout.size,)


def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(store8, tmp_path):
    opts = {**FAST, "iterations": 6}
    train(store8, tmp_path / "a", "lo-hp", policy_options=POLICY, train_options=opts)
    train(store8, tmp_path / "b", "lo-hp", policy_options=POLICY, train_options={**opts, "iterations": 4})
    train(store8, tmp_path / "b", "lo-hp", policy_options=POLICY, train_options=opts)  # resumes at 4
    a, b = load_file(str(tmp_path / "a" / "policy.safetensors")), load_file(str(tmp_path / "b" / "policy.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    iters = [int(line.split(",")[0]) for line in (tmp_path / "b" / "log.csv").read_text().splitlines()[1:]]
    assert iters == sorted(set(iters))  # no duplicated log rows after resuming


def test_a_kill_between_the_checkpoint_files_resumes_exactly(store8, tmp_path, monkeypatch):
    """A checkpoint is two files (tensors, then checkpoint.json): a kill after the tensors
    were replaced but before the description was must still resume from the weights'
    own iteration (the cause of a rare fault-injection failure)."""
    import lohp.training.checkpoints as ckpt

    opts = {**FAST, "iterations": 6}
    train(store8, tmp_path / "a", "lo-hp", policy_options=POLICY, train_options=opts)
    real = ckpt.atomic_write_json

    def killed_at_4(path, obj, sealed=False):
        if Path(path).name == "checkpoint.json" and obj["iteration"] == 4:
            raise KeyboardInterrupt  # stands for kill -9 between the two writes
        return real(path, obj, sealed=sealed)

    monkeypatch.setattr(ckpt, "atomic_write_json", killed_at_4)
    with pytest.raises(KeyboardInterrupt):
        train(store8, tmp_path / "b", "lo-hp", policy_options=POLICY, train_options=opts)
    monkeypatch.setattr(ckpt, "atomic_write_json", real)
    assert json.loads((tmp_path / "b" / "checkpoint.json").read_text())["iteration"] == 2  # the stale description
    train(store8, tmp_path / "b", "lo-hp", policy_options=POLICY, train_options=opts)
    a, b = load_file(str(tmp_path / "a" / "policy.safetensors")), load_file(str(tmp_path / "b" / "policy.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (load_file(str(tmp_path / d / "checkpoint.safetensors")) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_loses_at_most_one_checkpoint_interval(store8, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lohp.cli", "train", "--store", str(store8), "--out", str(out), "--iterations", "400",
           "--batch-size", "4", "--checkpoint-every", "3", "--eval-every", "1000", "--channels", "8", "--depth", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt = out / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt.exists() and json.loads(ckpt.read_text())["iteration"] >= 6):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "training never reached a checkpoint"
    done = json.loads(ckpt.read_text())["iteration"]
    assert done < 400
    Generator.load(out)  # the servable policy is intact after kill -9
    resumed = subprocess.run(cmd[:-8] + ["--iterations", str(done + 3), "--batch-size", "4", "--checkpoint-every",
                                         "3", "--eval-every", "1000", "--channels", "8", "--depth", "1"],
                             capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(ckpt.read_text())["iteration"] == done + 3


def test_changed_settings_do_not_silently_resume(store8, tmp_path):
    train(store8, tmp_path / "p", "lo-di", policy_options=POLICY, train_options=FAST)
    with pytest.raises(LohpError, match="other settings"):
        train(store8, tmp_path / "p", "lo-hp", policy_options=POLICY, train_options=FAST)


def test_k_must_fit_the_store(store8):
    store = TrajectoryStore.open(store8)
    with pytest.raises(LohpError, match="not divisible"):
        OfflineData(store, 3)
    with pytest.raises(LohpError, match="fewer than k"):
        OfflineData(store, 16)
    assert OfflineData(store, 4).n_steps == 2


def test_record_every_must_divide_k(tmp_path):
    out = tmp_path / "sparse"
    prepare(out, make_config(family_config={"n_way": 3}, optimizers=("adam",), tasks=2, steps=8, record_every=4))
    with pytest.raises(LohpError, match="records every 4"):
        OfflineData(TrajectoryStore.open(out), 2)


def test_nan_in_a_trajectory_is_refused(store8, tmp_path):
    import shutil

    from lohp.io import atomic_save_tensors, atomic_write_json, sha256_file

    dst = tmp_path / "nan"
    shutil.copytree(store8, dst)
    shard = dst / "shards" / "shard-00000.safetensors"
    tensors = load_file(str(shard))
    tensors["theta"][0, 3, 5] = float("nan")
    atomic_save_tensors(shard, tensors)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = sha256_file(shard)
    atomic_write_json(dst / "manifest.json", manifest, sealed=True)
    with pytest.raises(LohpError, match="NaN"):
        OfflineData(TrajectoryStore.open(dst), 2)


def test_generation_modes_adapt_and_save(store8, tmp_path):
    train(store8, tmp_path / "p", "lo-di", policy_options=POLICY, train_options=FAST)
    gen = Generator.load(tmp_path / "p")
    task = gen.family().sample(1, "heldout")
    a, b = gen.generate(task, seed=3), gen.generate(task, seed=3)
    assert torch.equal(a.theta, b.theta)
    eager = Generator.load(tmp_path / "p", compiled=False).generate(task, seed=3)
    assert torch.allclose(eager.theta, a.theta, atol=1e-6)  # the traced rollout is the same function
    s1 = gen.generate(task, seed=3, temperature=1.0, sample_seed=1)
    assert not torch.equal(a.theta, s1.theta)
    assert torch.equal(s1.theta, gen.generate(task, seed=3, temperature=1.0, sample_seed=1).theta)
    model = gen.adapt(task.model(), task, seed=3)
    with torch.no_grad():
        direct = task.layout.functional(task.model())(a.theta, task.x_eval)
        assert torch.allclose(model(task.x_eval), direct, atol=1e-6)
    a.save(tmp_path / "w.safetensors")
    saved = load_file(str(tmp_path / "w.safetensors"))
    assert torch.equal(saved["weight"], a.named["weight"])
    lat = gen.latency(task, repeats=3, warmup=1)
    assert lat["latency_ms"] > 0 and lat["steps"] == 4


def test_policy_errors_are_one_line(store8, tmp_path):
    train(store8, tmp_path / "p", "lo-di", policy_options=POLICY, train_options=FAST)
    gen = Generator.load(tmp_path / "p")
    bigger = gen.family(n_way=4).sample(0, "heldout")  # a head policy serves another class count
    assert gen.generate(bigger).named[bigger.layout.names[0]].shape[0] == 4
    mlp = gen.family(head="mlp", hidden=4).sample(0, "heldout")
    with pytest.raises(LohpError, match="parameter layout does not match the policy.s target model"):
        gen.generate(mlp)
    with pytest.raises(LohpError, match="does not exist|no trained policy"):
        Generator.load(tmp_path / "nothing")
    weights = tmp_path / "p" / "policy.safetensors"
    good = weights.read_bytes()
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF  # inside the tensor data; the header still parses
    weights.write_bytes(bytes(flipped))
    with pytest.raises(LohpError, match="policy weights .* is corrupt \\(its data do not match the sha256"):
        Generator.load(tmp_path / "p")
    weights.write_bytes(good[:100])
    with pytest.raises(LohpError, match="truncated or corrupt"):
        Generator.load(tmp_path / "p")


def test_near_zero_subtb_loss_generates_terminal_states_near_theta_T(tmp_path):
    """Theorem 1, numerically: fit one trajectory until the loss is small; the generated
    terminal state then lies close to theta_T (relative to how far theta_T is from theta_0)."""
    out = tmp_path / "one"
    prepare(out, make_config(family_config={"n_way": 3}, optimizers=("adam",), tasks=1, steps=8, seed=2))
    res = train(out, tmp_path / "p", "lo-hp", policy_options={"channels": 16, "token_size": 8, "depth": 1},
                train_options={"iterations": 500, "batch_size": 2, "lr": 3e-3, "log_every": 500, "eval_every": 500,
                               "eval_tasks": 1, "checkpoint_every": 500})
    assert res["dist_final"] < 0.25, res


def test_a_time_budget_counts_training_seconds_and_records_a_learning_curve(store8, tmp_path):
    """time_limit stops on training seconds (evaluation off the clock) and eval_every_seconds
    puts held-out evaluations at regular training-time intervals, the last at the end."""
    import csv

    budget, every = 1.5, 0.5
    res = train(store8, tmp_path / "p", "lo-hp", policy_options=POLICY,
                train_options={**FAST, "iterations": 100_000, "log_every": 100_000, "eval_every": 100_000,
                               "checkpoint_every": 100_000, "time_limit": budget, "eval_every_seconds": every})
    rows = list(csv.DictReader(open(tmp_path / "p" / "log.csv")))
    curve = [(float(r["train_seconds"]), float(r["heldout_accuracy"])) for r in rows if r["heldout_accuracy"]]
    assert len(curve) >= 3
    times = [t for t, _ in curve]
    assert times == sorted(times) and times[0] >= every and budget <= times[-1] < budget + 0.5
    assert res["train_seconds"] == pytest.approx(times[-1]) and res["iteration"] == int(rows[-1]["iteration"])
    # wall time includes the evaluations, training time does not
    assert float(rows[-1]["seconds"]) >= float(rows[-1]["train_seconds"])
    with pytest.raises(LohpError, match="eval_every_seconds"):
        train(store8, tmp_path / "q", "lo-hp", policy_options=POLICY, train_options={**FAST, "eval_every_seconds": 0})


def test_streamed_offline_data_draws_the_same_batches_and_trains_the_same(small_store_path, tmp_path):
    """in_memory_gb=0 reads each batch from the memory-mapped shards: the same scales (up to
    float rounding), the same batches bit for bit, and the same training losses as the
    in-memory tensor; the stride-k rows equal the store's own checkpoints."""
    import csv

    store = TrajectoryStore.open(small_store_path)
    mem, stream = OfflineData(store, 2), OfflineData(store, 2, in_memory_gb=0)
    assert not mem.streamed and stream.streamed and stream.thetas is None and len(mem) == len(stream)
    torch.testing.assert_close(stream.step_scale, mem.step_scale, rtol=1e-5, atol=0)
    for a in ("theta_scale", "init_scale", "cond_scale"):
        assert getattr(stream, a) == pytest.approx(getattr(mem, a), rel=1e-5)
    for seed in range(3):
        b1 = mem.sample(5, torch.Generator().manual_seed(seed))
        b2 = stream.sample(5, torch.Generator().manual_seed(seed))
        assert torch.equal(b1.offline, b2.offline) and torch.equal(b1.cond, b2.cond)
    # independent reference: trajectory 3's recorded checkpoints at steps 0, 2, 4, ...
    steps = store.steps(3)
    want = store.theta(3)[[steps.index(s) for s in range(0, store.config["steps"] + 1, 2)]]
    assert torch.equal(stream.rows(torch.tensor([3]))[0], want)

    opts = {"iterations": 3, "eval_every": 100, "checkpoint_every": 1, "log_every": 1, "eval_tasks": 1,
            "diagnostic_trajectories": 2}
    pol = {"channels": 8, "depth": 1}
    losses = []
    for name, extra in (("mem", {}), ("stream", {"in_memory_gb": 0})):
        train(small_store_path, tmp_path / name, "lo-hp", 2, {}, pol, {**opts, **extra})
        with open(tmp_path / name / "log.csv") as fh:
            losses.append([float(r["loss"]) for r in csv.DictReader(fh)])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4) and len(losses[0]) == 3  # (scales differ by rounding)


def test_a_policy_folder_from_before_a_new_setting_resumes(small_store_path, tmp_path):
    """A policy.json without a setting this version added (as an older lohp wrote it)
    resumes with that setting's default; a changed setting is still refused."""
    import json

    opts = {"iterations": 1, "eval_every": 100, "checkpoint_every": 1, "log_every": 1, "eval_tasks": 1,
            "diagnostic_trajectories": 2}
    pol = {"channels": 8, "depth": 1}
    train(small_store_path, tmp_path / "p", "lo-di", 2, {}, pol, opts)
    meta_path = tmp_path / "p" / "policy.json"
    meta = json.loads(meta_path.read_text())
    del meta["policy_config"]["structure"]  # a setting added in a later version
    del meta["checksum"]  # an older lohp did not seal its metadata
    meta_path.write_text(json.dumps(meta))
    assert train(small_store_path, tmp_path / "p", "lo-di", 2, {}, pol, {**opts, "iterations": 2})["iteration"] == 2
    with pytest.raises(LohpError, match="policy_config differ"):
        train(small_store_path, tmp_path / "p", "lo-di", 2, {}, {**pol, "channels": 16}, {**opts, "iterations": 3})
