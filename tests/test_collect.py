"""The vectorised Stage I collector against a plain per-run loop (nn.Module + torch.optim)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lohp.errors import LohpError
from lohp.optim import make_optimizer
from lohp.tasks import DigitsFamily
from lohp.trajectories import collect, evaluate_checkpoints, recorded_steps, train_runs


def test_recorded_steps():
    assert recorded_steps(4, 1) == [0, 1, 2, 3, 4]
    assert recorded_steps(8, 3) == [0, 3, 6, 8]
    assert recorded_steps(9, 3) == [0, 3, 6, 9]
    assert recorded_steps(5, 10) == [0, 5]
    assert recorded_steps(1, 1) == [0, 1]
    for steps, every in ((0, 1), (-3, 1), (4, 0), (4, -1)):
        with pytest.raises(LohpError, match="must be > 0"):
            recorded_steps(steps, every)


def _draws(tasks, steps: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """train_runs' minibatch indices: one generator, one [R, B] uniform draw per step."""
    gen = torch.Generator().manual_seed(seed)
    n = torch.tensor([len(t.x_train) for t in tasks])
    return [(torch.rand(len(tasks), batch_size, generator=gen) * n[:, None]).long() for _ in range(steps)]


def _set_params(module: nn.Module, theta: torch.Tensor) -> None:
    """Copy a flat vector into every parameter, in module order (independent of ParamLayout)."""
    off = 0
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(theta[off:off + p.numel()].reshape(p.shape))
            off += p.numel()
    assert off == theta.numel()


def _get_params(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def _torch_opt(name: str, hp: dict, params):
    if name in ("sgd", "sam"):
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"], weight_decay=hp["weight_decay"])


def per_run_reference(tasks, name: str, hp: dict, theta0: torch.Tensor, steps: int, batch_size: int,
                      seed: int) -> torch.Tensor:
    """Every run on its own: module, torch.optim, the same minibatches; returns [R, steps+1, d]."""
    draws = _draws(tasks, steps, batch_size, seed)
    out = []
    for r, task in enumerate(tasks):
        m = task.model()
        _set_params(m, theta0[r])
        params = list(m.parameters())
        opt = _torch_opt(name, hp, params)
        traj = [_get_params(m)]
        for t in range(steps):
            idx = draws[t][r]
            assert int(idx.max()) < len(task.x_train)
            xb, yb = task.x_train[idx], task.y_train[idx]
            opt.zero_grad()
            nn.functional.cross_entropy(m(xb), yb).backward()
            if "rho" in hp:  # two-pass SAM on the same minibatch
                with torch.no_grad():
                    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
                    eps = [hp["rho"] * p.grad / (norm + 1e-12) for p in params]
                    for p, e in zip(params, eps):
                        p.add_(e)
                opt.zero_grad()
                nn.functional.cross_entropy(m(xb), yb).backward()
                with torch.no_grad():
                    for p, e in zip(params, eps):
                        p.sub_(e)
            opt.step()
            traj.append(_get_params(m))
        out.append(torch.stack(traj))
    return torch.stack(out)


@pytest.fixture(scope="module")
def tasks():
    ts = DigitsFamily(n_way=4).source_tasks(3, start=5)
    assert len({len(t.x_train) for t in ts}) > 1, "want tasks of different sizes (padding)"
    return ts


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "sam", "sam-adam"])
def test_train_runs_equals_per_run_loop(tasks, name):
    theta0 = torch.stack([t.init_theta(100 + i) for i, t in enumerate(tasks)])
    opt = make_optimizer(name)
    steps, bs, seed = 8, 16, 123
    thetas, rec, seconds = train_runs(tasks, opt, theta0, steps, batch_size=bs, seed=seed)
    assert rec.tolist() == list(range(steps + 1)) and seconds > 0
    assert thetas.shape == (3, steps + 1, theta0.shape[1])
    want = per_run_reference(tasks, name, opt.hparams, theta0, steps, bs, seed)
    assert torch.equal(thetas[:, 0], theta0)
    assert (want[:, -1] - want[:, 0]).abs().max() > 1e-2  # the runs moved
    torch.testing.assert_close(thetas, want, rtol=0, atol=1e-5)


def test_train_runs_records_every_s_th_step(tasks):
    theta0 = torch.stack([t.init_theta(i) for i, t in enumerate(tasks)])
    opt = make_optimizer("sgd", lr=0.1)
    seen = []
    thetas, rec, _ = train_runs(tasks, opt, theta0, 8, batch_size=8, record_every=3, seed=7, on_step=seen.append)
    assert rec.tolist() == [0, 3, 6, 8] and thetas.shape[1] == 4
    assert seen == list(range(1, 9))
    want = per_run_reference(tasks, "sgd", opt.hparams, theta0, 8, 8, 7)
    torch.testing.assert_close(thetas, want[:, [0, 3, 6, 8]], rtol=0, atol=1e-5)
    # the same seed gives the same runs, another seed other minibatches
    again, _, _ = train_runs(tasks, opt, theta0, 8, batch_size=8, record_every=3, seed=7)
    other, _, _ = train_runs(tasks, opt, theta0, 8, batch_size=8, record_every=3, seed=8)
    assert torch.equal(again, thetas) and not torch.equal(other, thetas)


def test_train_runs_mlp_head():
    fam = DigitsFamily(n_way=3, head="mlp", hidden=8)
    ts = fam.source_tasks(2)
    theta0 = torch.stack([t.init_theta(i) for i, t in enumerate(ts)])
    opt = make_optimizer("adam")
    thetas, _, _ = train_runs(ts, opt, theta0, 6, batch_size=8, seed=1)
    torch.testing.assert_close(thetas, per_run_reference(ts, "adam", opt.hparams, theta0, 6, 8, 1),
                               rtol=0, atol=1e-5)


def test_frozen_rest_is_fixed_when_only_part_is_generated():
    """Generating only the last layer of an MLP: the hidden layer must stay the same frozen layer
    for training, for evaluation and across calls (it must not be re-drawn at random)."""
    fam = DigitsFamily(n_way=3, head="mlp", hidden=8, patterns=("2.*",))
    ts = fam.source_tasks(2)
    theta0 = torch.stack([t.init_theta(i) for i, t in enumerate(ts)])
    assert theta0.shape == (2, 8 * 3 + 3)
    a = collect(ts, make_optimizer("sgd"), theta0, 4, batch_size=8, seed=0)
    b = collect(ts, make_optimizer("sgd"), theta0, 4, batch_size=8, seed=0)
    assert torch.equal(a.thetas, b.thetas)
    assert ts[0].evaluate(theta0[0]) == ts[0].evaluate(theta0[0])
    assert torch.equal(ts[0].model()[0].weight, ts[1].model()[0].weight)
    for r, t in enumerate(ts):
        for k in range(a.thetas.shape[1]):
            assert a.eval_loss[r, k].item() == pytest.approx(t.evaluate(a.thetas[r, k])["loss"], rel=1e-5)


def test_evaluate_checkpoints_equals_task_evaluate(tasks):
    theta0 = torch.stack([t.init_theta(i) for i, t in enumerate(tasks)])
    thetas, _, _ = train_runs(tasks, make_optimizer("adam"), theta0, 6, batch_size=16, seed=3)
    got = evaluate_checkpoints(tasks, thetas, chunk=4)  # chunk < records: exercises chunking
    for key in ("train_loss", "eval_loss", "eval_metric"):
        assert got[key].shape == (3, 7)
    for r, t in enumerate(tasks):
        for k in range(7):
            ev, tr = t.evaluate(thetas[r, k], "eval"), t.evaluate(thetas[r, k], "train")
            assert got["eval_loss"][r, k].item() == pytest.approx(ev["loss"], rel=1e-5, abs=1e-6)
            assert got["eval_metric"][r, k].item() == pytest.approx(ev["accuracy"], abs=1e-6)
            assert got["train_loss"][r, k].item() == pytest.approx(tr["loss"], rel=1e-5, abs=1e-6)
    # training helps: final train loss below the initial one for every run
    assert (got["train_loss"][:, -1] < got["train_loss"][:, 0]).all()


def test_collect_bundles_training_and_metrics(tasks):
    theta0 = torch.stack([t.init_theta(i) for i, t in enumerate(tasks)])
    opt = make_optimizer("sgd")
    res = collect(tasks, opt, theta0, 5, batch_size=8, record_every=2, seed=9)
    thetas, rec, _ = train_runs(tasks, opt, theta0, 5, batch_size=8, record_every=2, seed=9)
    assert torch.equal(res.thetas, thetas) and res.steps.tolist() == rec.tolist() == [0, 2, 4, 5]
    metrics = evaluate_checkpoints(tasks, thetas)
    assert torch.equal(res.train_loss, metrics["train_loss"])
    assert torch.equal(res.eval_loss, metrics["eval_loss"])
    assert torch.equal(res.eval_metric, metrics["eval_metric"])


def test_collect_errors(tasks):
    theta0 = torch.stack([t.init_theta(i) for i, t in enumerate(tasks)])
    bad = theta0.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(LohpError, match="diverged.*lower its learning rate"):
        collect(tasks, make_optimizer("sgd"), bad, 2, batch_size=4)
    with pytest.raises(LohpError, match="batch size"):
        train_runs(tasks, make_optimizer("sgd"), theta0, 2, batch_size=0)
    with pytest.raises(LohpError, match="steps"):
        train_runs(tasks, make_optimizer("sgd"), theta0, 0)
    with pytest.raises(ValueError):
        train_runs(tasks, make_optimizer("sgd"), theta0[:2], 2)
