"""The default lo-hp ("on-policy states, off-policy targets") and the optimizer-shaped head
policy, against independent references: a hand-written loop, autograd, torch.optim-free
closed forms, and an end-to-end whole-MLP run that the earlier hybrid could not pass."""

import json

import pytest
import torch
from torch import nn

from lohp.errors import LohpError
from lohp.layout import ParamLayout
from lohp.losses import Batch, LossConfig, OnPolicyStates, loss_config, make_loss
from lohp.policy import LohpPolicy, PolicyConfig, make_structure
from lohp.policy.surrogate import class_mean_ce, class_mean_ce_grad
from tests.helpers import tiny_policy


# --------------------------------------------------------------------------- surrogate gradient
def assert_unit_rms_multiple(got: torch.Tensor, direction: torch.Tensor) -> None:
    """``got`` is ``direction`` times a positive number, and its RMS is 1 (the features'
    stated scaling), checked without re-typing the normalisation."""
    assert got.square().mean().item() == pytest.approx(1.0, rel=1e-9)
    scale = (got * direction).sum() / direction.square().sum()
    assert scale.item() > 0
    assert torch.allclose(got, scale * direction, atol=1e-10, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_class_mean_ce_grad_is_minus_the_autograd_gradient(bias):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 7, dtype=torch.float64)
    w = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, dtype=torch.float64, requires_grad=True) if bias else None
    # Reference: the plain cross-entropy of each class mean labelled with its class.
    loss = sum(nn.functional.cross_entropy(x[i] @ w[i].T + (b[i] if bias else 0), torch.arange(4))
               for i in range(2))
    grads = torch.autograd.grad(loss, [w] + ([b] if bias else []))
    _, g_w, g_b = class_mean_ce_grad(x, w.detach(), None if b is None else b.detach())
    assert torch.allclose(g_w, -grads[0], atol=1e-12)
    if bias:
        assert torch.allclose(g_b, -grads[1], atol=1e-12)
    else:
        assert g_b is None
    assert torch.allclose(class_mean_ce(x, w, b).sum(), loss)


def test_head_structure_features_are_the_unit_rms_negative_gradient_and_the_class_means(digits):
    task = digits.sample(0)
    st = make_structure(task.layout)
    assert st.kind == "class-rows" and st.features == "gradient" and st.condition_channels == 2
    theta = (0.3 * torch.randn(task.layout.size, dtype=torch.float64))
    cond = task.condition().double()
    t = theta.clone().requires_grad_()
    logits = task.layout.functional(task.model().double())(t, cond)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(logits, torch.arange(5)), t)
    feats = st.condition_rows(cond, theta)
    assert feats.shape == (5, 65, 2)
    assert_unit_rms_multiple(feats[..., 0], st.rows(-g))
    # the class means in the weight slots, 0 in the bias slot, unit RMS over all 5 x 65 entries
    means = feats[..., 1]
    assert torch.all(means[:, 64] == 0)
    assert_unit_rms_multiple(means, torch.cat([cond, torch.zeros(5, 1, dtype=cond.dtype)], 1))


def test_lora_head_features_are_the_unit_rms_negative_gradient():
    from lohp.policy.lora_structure import LoraStructure

    c, h, r = 3, 6, 2
    net = nn.ModuleDict({"lora_A": nn.Linear(h, r, bias=False), "lora_B": nn.Linear(r, h, bias=False),
                         "head": nn.Linear(h, c, bias=False)})
    layout = ParamLayout.from_module(net, ("*",))
    st = LoraStructure.from_layout(layout)
    theta = torch.randn(layout.size, dtype=torch.float64)
    cond = torch.randn(c, h, dtype=torch.float64)
    w = theta[st.head_offset:st.head_offset + c * h].reshape(c, h).clone().requires_grad_()
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(cond @ w.T, torch.arange(c)), w)
    assert_unit_rms_multiple(st.condition_rows(cond, theta)[..., 2 * r:, 0], -g.T)


def test_an_untrained_head_policy_steps_toward_lower_surrogate_loss(digits):
    """No training: the first step of the default head policy lowers the surrogate loss of
    every task (it is a preconditioned descent step on it), at the real step size."""
    tasks = [digits.sample(i) for i in range(4)]
    layout = tasks[0].layout
    torch.manual_seed(0)
    policy = LohpPolicy(make_structure(layout), 4, PolicyConfig(channels=8, token_size=8, depth=1),
                        step_scale=torch.full((4,), 0.02), theta_scale=0.1, cond_scale=5.0).eval()
    s0 = torch.stack([t.init_theta(i, "normal", 0.01) for i, t in enumerate(tasks)])
    cond = torch.stack([t.condition() for t in tasks])
    st = policy.structure

    def surrogate(theta):
        rows = st.rows(theta)
        return class_mean_ce(cond, rows[..., :-1], rows[..., -1])

    with torch.no_grad():
        s1 = s0 + policy(s0, torch.zeros(4, dtype=torch.long), cond)
        s4 = policy.rollout(s0, cond)
    assert torch.all(surrogate(s1) < surrogate(s0))
    assert torch.all(surrogate(s4) < surrogate(s1))
    # and the generated head already classifies the tasks' evaluation splits above chance
    assert min(t.evaluate(th)["accuracy"] for t, th in zip(tasks, s4)) > 0.5


# --------------------------------------------------------------------------- the loss
def _reference_loss(policy, thetas, cond, beta, widths, noise, gen):
    """The formulation written as a plain double loop over (trajectory, step), drawing the
    same random numbers in the same order as the vectorised loss."""
    b, n1, d = thetas.shape
    n = n1 - 1
    pick = torch.randint(len(widths), (b,), generator=gen)
    with torch.no_grad():
        s = thetas[:, 0] * torch.tensor(widths)[pick][:, None]
        visited = [s]
        for j in range(n - 1):
            jj = torch.full((b,), j, dtype=torch.long)
            s = s + policy(s, jj, cond)
            if noise:
                s = s + policy.sigma_f(jj)[:, None] * torch.randn(s.shape, generator=gen)
            visited.append(s)
    on = torch.rand((b, n), generator=gen) >= beta
    total = 0.0
    for i in range(b):
        for j in range(n):
            state = visited[j][i] if on[i, j] else thetas[i, j]
            mu = policy(state[None], torch.tensor([j]), cond[i:i + 1])[0]
            err = (thetas[i, j + 1] - state - mu) / policy.step_scale[j]
            total = total + err.square().mean()
    return total / (b * n)


@pytest.mark.parametrize("beta,widths,noise", [(0.5, [1.0], True), (0.0, [1.0, 10.0], False), (0.3, [3.0], True)])
def test_on_policy_states_loss_matches_a_hand_written_loop(beta, widths, noise):
    policy, thetas, cond = tiny_policy(n_steps=4)
    cfg = LossConfig(method="lo-hp", k=2, beta=beta, start_widths=widths, rollout_noise=noise)
    loss, diag = OnPolicyStates(cfg)(policy, Batch(thetas, cond, torch.Generator().manual_seed(5)))
    ref = _reference_loss(policy, thetas, cond, beta, widths, noise, torch.Generator().manual_seed(5))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    # the gradient reaches the policy, and only through mu (visited states carry no graph)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_beta_one_is_lo_di_and_off_policy_targets_are_the_matched_checkpoints():
    """beta = 1: every slot is a real state, and the loss equals the lo-di regression."""
    policy, thetas, cond = tiny_policy(n_steps=4)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    hp, diag = make_loss(loss_config("lo-hp", beta=1.0))(policy, Batch(thetas, cond, gen()))
    di, _ = make_loss(loss_config("lo-di"))(policy, Batch(thetas, cond, gen()))
    assert hp.item() == pytest.approx(di.item(), rel=1e-6)
    assert "loss_off" in diag and "loss_on" not in diag


def test_method_presets_pick_their_formulation():
    assert isinstance(make_loss(loss_config("lo-hp")), OnPolicyStates)
    assert isinstance(make_loss(loss_config("lo-op")), OnPolicyStates)
    from lohp.losses import HybridSubTB

    assert isinstance(make_loss(loss_config("lo-hp-v1")), HybridSubTB)
    assert isinstance(make_loss(loss_config("lo-hp-literal")), HybridSubTB)
    with pytest.raises(LohpError, match="start_widths"):
        loss_config("lo-hp", start_widths=[0.0])
    with pytest.raises(LohpError, match="formulation"):
        loss_config("lo-hp", formulation="magic")


# --------------------------------------------------------------------------- end to end
def test_lo_hp_learns_a_whole_mlp_well_above_chance(tmp_path):
    """A tiny whole-MLP store (digits pixels 64 -> 16 -> 3): lo-hp's generated networks
    classify held-out tasks clearly above chance (1/3). The earlier hybrid stayed at chance on
    whole networks (docs/benchmarks.md, the domain table)."""
    from lohp.generation import Generator
    from lohp.training import train
    from lohp.trajectories import make_config, prepare

    store = tmp_path / "store"
    prepare(store, make_config(family="digits", family_config={"n_way": 3, "head": "mlp", "hidden": 16},
                               optimizers=("adam",), tasks=12, steps=8, batch_size=32, seed=1))
    train(store, tmp_path / "p", "lo-hp", policy_options={"channels": 16, "token_size": 16, "depth": 1},
          train_options={"iterations": 150, "batch_size": 8, "lr": 3e-3, "log_every": 150, "eval_every": 150,
                         "eval_tasks": 4, "checkpoint_every": 150})
    gen = Generator.load(tmp_path / "p")
    tasks = gen.family().heldout_tasks(10)
    theta = gen.generate_batch(tasks, seeds=list(range(10)))
    acc = sum(t.evaluate(th)["accuracy"] for t, th in zip(tasks, theta)) / len(tasks)
    assert acc > 0.7, acc


# --------------------------------------------------------------------------- bad input
def test_a_policy_of_an_unknown_method_or_option_is_refused_in_one_line(tmp_path):
    from lohp.io import atomic_write_json
    from lohp.policy.io import META
    from lohp.policy_folder import load_policy
    from lohp.training import train
    from lohp.trajectories import make_config, prepare

    store = tmp_path / "store"
    prepare(store, make_config(family_config={"n_way": 3}, optimizers=("adam",), tasks=2, steps=4, seed=0))
    train(store, tmp_path / "p", "lo-hp", policy_options={"channels": 8, "token_size": 8, "depth": 1},
          train_options={"iterations": 2, "batch_size": 2, "eval_tasks": 1, "checkpoint_every": 2})
    # as a newer lohp or a plugin would write them (sealed), with what this one lacks
    meta = json.loads((tmp_path / "p" / META).read_text())
    atomic_write_json(tmp_path / "p" / META, {**meta, "method": "lo-hp-v9"}, sealed=True)
    with pytest.raises(LohpError, match="lo-hp-v9.*does not have"):
        load_policy(tmp_path / "p")
    atomic_write_json(tmp_path / "p" / META, {**meta, "policy_config": {**meta["policy_config"], "warp": 1}}, sealed=True)
    with pytest.raises(LohpError, match="warp"):
        load_policy(tmp_path / "p")
    atomic_write_json(tmp_path / "p" / META, {**meta, "structure": {**meta["structure"], "kind": "conv"}}, sealed=True)
    with pytest.raises(LohpError, match="'conv'.*does not have"):
        load_policy(tmp_path / "p")


def test_nan_in_a_loss_term_names_the_term_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from lohp.training import train
    from lohp.trajectories import make_config, prepare

    store = tmp_path / "store"
    prepare(store, make_config(family_config={"n_way": 3}, optimizers=("adam",), tasks=2, steps=4, seed=0))
    real = OnPolicyStates.__call__

    def poisoned(self, policy, batch):
        loss, diag = real(self, policy, batch)
        return loss * float("nan"), {**diag, "loss_on": float("nan")}

    monkeypatch.setattr(OnPolicyStates, "__call__", poisoned)
    with pytest.raises(LohpError, match="loss term loss_on at iteration 1"):
        train(store, tmp_path / "p", "lo-hp", policy_options={"channels": 8, "token_size": 8, "depth": 1},
              train_options={"iterations": 2, "batch_size": 2, "eval_tasks": 1})
