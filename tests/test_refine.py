"""Generate-then-refine: the refine path against a plain torch.optim loop from the same start."""

from __future__ import annotations

import pytest
import torch

from lohp.errors import LohpError


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from lohp import api

    root = tmp_path_factory.mktemp("refine")
    api.prepare(root / "store", family_config={"n_way": 3}, optimizers=("adam", "sgd"), tasks=3, steps=4, seed=0,
                batch_size=8, hparams={"adam": {"lr": 0.02}})
    api.train(root / "store", root / "p", "lo-hp", policy_options={"channels": 8, "token_size": 8, "depth": 1},
              train_options={"iterations": 3, "batch_size": 3, "eval_tasks": 1})
    return root / "p"


def _torch_adam(task, theta0, steps, lr, batch_size, seed):
    """torch.optim.Adam on the task's functional model, the same minibatch draws."""
    model = task.model()
    f = task.layout.functional(model)
    p = theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    g = torch.Generator().manual_seed(seed)
    n = len(task.x_train)
    for _ in range(steps):
        idx = (torch.rand(1, batch_size, generator=g) * n).long()[0]
        opt.zero_grad()
        task.loss_fn(f(p, task.x_train[idx]), task.y_train[idx]).mean().backward()
        opt.step()
    return p.detach()


def test_refine_is_a_torch_optim_adam_loop_from_the_generated_weights(policy):
    from lohp import api

    gen = api.load_policy(policy)
    assert gen.refine_hparams("adam")["lr"] == 0.02  # Stage I's setting, recorded in the policy
    task = gen.family().sample(1, "heldout")
    start = api.generate(gen, task).theta
    ours = gen.refine(task, start, 5, "adam", lr=0.01, batch_size=8, seed=3)
    ref = _torch_adam(task, start, 5, 0.01, 8, 3)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ours, start)
    # adapt: s_0 and the minibatches both from seed 0 here
    model = api.adapt(gen, task.model(), task, refine_steps=5, optimizer="adam", lr=0.01, batch_size=8)
    torch.testing.assert_close(task.layout.flatten(model), _torch_adam(task, start, 5, 0.01, 8, 0),
                               atol=1e-5, rtol=1e-4)
    # refine_steps=0 is the generated weights
    plain = api.adapt(gen, task.model(), task)
    torch.testing.assert_close(task.layout.flatten(plain), start)


def test_refine_refuses_bad_counts_and_optimizers(policy):
    from lohp import api

    gen = api.load_policy(policy)
    task = gen.family().sample(0, "heldout")
    with pytest.raises(LohpError, match="whole number >= 0"):
        api.adapt(gen, task.model(), task, refine_steps=-1)
    with pytest.raises(LohpError, match="unknown refine optimizer 'adamx'"):
        api.adapt(gen, task.model(), task, refine_steps=2, optimizer="adamx")
    with pytest.raises(LohpError, match="must be > 0"):
        gen.refine_hparams("sgd", lr=0.0)


def test_generate_refine_cli(policy, tmp_path, cli):
    from safetensors import safe_open

    code, out, err = cli("generate", "--policy", policy, "--out", tmp_path / "w.safetensors", "--refine", "4",
                         "--refine-optimizer", "sgd", "--refine-lr", "0.1", "--no-latency")
    assert code == 0, err
    assert "after 4 sgd steps (generated:" in out
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as fh:
        assert fh.metadata()["refine"] == "4 sgd steps"
    for args, msg in ((["--refine", "0"], "--refine takes"), (["--refine", "-2"], "--refine takes"),
                      (["--refine", "2", "--refine-optimizer", "nope"], "unknown refine optimizer")):
        code, out, err = cli("generate", "--policy", policy, "--out", tmp_path / "x.safetensors", *args)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not (tmp_path / "x.safetensors").exists()
