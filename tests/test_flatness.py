"""Flatness measures: Hutchinson trace, exact trace, top eigenvalue, local entropy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lohp import LohpError, ParamLayout
from lohp.flatness import (exact_hessian, exact_trace, flatness_metrics, hutchinson_trace, hutchinson_trace_graph,
                           hvp, local_entropy, local_entropy_grad, local_entropy_loss, local_entropy_mean,
                           quadratic_local_entropy, rademacher, task_loss_fn, top_eigenvalue)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run many tiny ops: one torch thread is faster (and far faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spd(d: int, seed: int, shift: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(d, d, generator=g, dtype=torch.float64)
    return q @ q.T / d + shift * torch.eye(d, dtype=torch.float64)


def _quadratic(a: torch.Tensor):
    return lambda x: 0.5 * ((x @ a) * x).sum(-1)


def _hutchinson_sd(h: torch.Tensor, probes: int) -> float:
    """Standard deviation of the Rademacher Hutchinson estimator with ``probes`` probes."""
    return math.sqrt(2 * ((h ** 2).sum() - (h.diagonal() ** 2).sum()).item() / probes)


def _tiny_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    layout = ParamLayout.from_module(net)
    f = layout.batched(net, shared_input=True)

    def loss(theta):
        if theta.dim() == 1:
            return loss(theta[None])[0]
        return nn.functional.cross_entropy(f(theta, x).transpose(1, 2), y[None].expand(len(theta), -1),
                                           reduction="none").mean(-1)

    return loss, layout.flatten(net)


# --------------------------------------------------------------------------- Hessian trace
def test_rademacher_entries():
    v = rademacher((1000,), torch.Generator().manual_seed(0))
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    assert abs(v.mean().item()) < 0.1


def test_exact_trace_and_hessian_of_quadratic():
    a = _spd(7, 0)
    f = _quadratic(a)
    x = torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(exact_hessian(f, x), a)
    assert exact_trace(f, x).item() == pytest.approx(a.trace().item())
    xs = torch.randn(3, 7, dtype=torch.float64)  # batched: one block per run
    torch.testing.assert_close(exact_hessian(f, xs), a.expand(3, 7, 7))
    torch.testing.assert_close(hvp(f, xs, torch.ones_like(xs)), (a @ torch.ones(7, dtype=torch.float64)).expand(3, 7))


@pytest.mark.parametrize("problem", ["quadratic", "network"])
def test_hutchinson_matches_exact_trace_and_error_shrinks_with_probes(problem):
    if problem == "quadratic":
        a = _spd(20, 3)
        f, theta, h = _quadratic(a), torch.randn(20, dtype=torch.float64), a
    else:
        f, theta = _tiny_net()
        h = exact_hessian(f, theta)
    exact = exact_trace(f, theta).item()
    assert exact == pytest.approx(h.trace().item())
    reps = 100  # independent estimates: one run per repetition, each with its own probes
    thetas = theta.expand(reps, -1).clone()
    rmse = {}
    for probes in (2, 16, 128):
        est = hutchinson_trace(f, thetas, probes, torch.Generator().manual_seed(probes))
        assert est.shape == (reps,)
        rmse[probes] = (est - exact).pow(2).mean().sqrt().item()
        # Within 1.4x of the estimator's exact standard deviation (the sample RMSE of 100
        # repetitions is within about 7% of it).
        assert rmse[probes] <= 1.4 * _hutchinson_sd(h, probes) + 1e-9, (probes, rmse)
    assert rmse[128] < rmse[16] < rmse[2]
    assert rmse[128] / abs(exact) < 0.15


def test_hutchinson_stderr_and_argument_checks():
    a = _spd(5, 1)
    est, se = hutchinson_trace(_quadratic(a), torch.zeros(5, dtype=torch.float64), 64,
                               torch.Generator().manual_seed(0), return_stderr=True)
    assert se.item() > 0 and abs(est.item() - a.trace().item()) < 5 * se.item()
    with pytest.raises(LohpError, match="probes"):
        hutchinson_trace(_quadratic(a), torch.zeros(5, dtype=torch.float64), 0)


def test_hutchinson_is_differentiable_through_theta():
    """Back-propagating the estimate through weights that are themselves a graph output
    equals the reverse-over-reverse reference with the same probes."""
    f, theta0 = _tiny_net()
    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    theta = theta0 * w
    est = hutchinson_trace(f, theta, 4, torch.Generator().manual_seed(5))
    (g_func,) = torch.autograd.grad(est, w)
    vs = rademacher((4, theta0.numel()), torch.Generator().manual_seed(5), torch.float64)
    theta = theta0 * w
    (gr,) = torch.autograd.grad(f(theta), theta, create_graph=True)
    ref = sum((torch.autograd.grad((gr * v).sum(), theta, create_graph=True)[0] * v).sum() for v in vs) / 4
    assert est.item() == pytest.approx(ref.item(), rel=1e-8)
    (g_ref,) = torch.autograd.grad(ref, w)
    assert g_func.item() == pytest.approx(g_ref.item(), rel=1e-6)


def test_hutchinson_graph_matches_exact_trace():
    a = _spd(6, 2)
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    est = torch.stack([hutchinson_trace_graph(0.5 * x @ a @ x, [x], 64, torch.Generator().manual_seed(s),
                                              create_graph=False) for s in range(20)]).mean()
    assert est.item() == pytest.approx(a.trace().item(), rel=0.05)


# --------------------------------------------------------------------------- top eigenvalue
def test_top_eigenvalue_matches_eigvalsh():
    a = _spd(12, 4)
    f = _quadratic(a)
    lam = top_eigenvalue(f, torch.randn(3, 12, dtype=torch.float64), iters=500, tol=1e-10,
                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(a)[-1].expand(3), rtol=1e-5, atol=1e-8)
    fn, theta = _tiny_net()
    lam = top_eigenvalue(fn, theta, iters=500, tol=1e-10, generator=torch.Generator().manual_seed(0))
    assert lam.item() == pytest.approx(torch.linalg.eigvalsh(exact_hessian(fn, theta))[-1].item(), rel=1e-4)


def test_top_eigenvalue_is_the_largest_not_the_largest_magnitude():
    a = torch.diag(torch.tensor([-5.0, 1.0, 2.0], dtype=torch.float64))  # a saddle
    lam = top_eigenvalue(_quadratic(a), torch.zeros(3, dtype=torch.float64), iters=500, tol=1e-12,
                         generator=torch.Generator().manual_seed(0))
    assert lam.item() == pytest.approx(2.0, rel=1e-5)


# --------------------------------------------------------------------------- local entropy
def test_quadratic_closed_form_matches_quadrature_in_one_dimension():
    """The closed form itself, checked against numerical integration of the definition."""
    a, b, x, gamma, temp = 1.7, 0.4, 0.8, 0.9, 0.5
    grid = torch.linspace(-30, 30, 200001, dtype=torch.float64)
    integrand = -(0.5 * a * grid ** 2 - b * grid + 0.5 * gamma * (x - grid) ** 2) / temp
    numeric = torch.logsumexp(integrand, 0) + math.log(grid[1] - grid[0])

    def closed(at: float):
        t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        return quadratic_local_entropy(t([[a]]), t([at]), gamma, temp, t([b]))

    value, gradient = closed(x)
    assert value.item() == pytest.approx(numeric.item(), abs=1e-6)
    eps = 1e-4
    up, down = closed(x + eps)[0], closed(x - eps)[0]
    assert gradient.item() == pytest.approx((up - down).item() / (2 * eps), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_local_entropy_value_matches_closed_form(temperature):
    a = _spd(3, 5)
    x = torch.tensor([0.7, -0.4, 0.2], dtype=torch.float64)
    gamma = 2.0
    closed, _ = quadratic_local_entropy(a, x, gamma, temperature)
    # Textbook form with b = 0 (the docstring's second expression).
    eye = torch.eye(3, dtype=torch.float64)
    textbook = (1.5 * math.log(2 * math.pi * temperature) - 0.5 * torch.logdet(a + gamma * eye)
                - gamma / (2 * temperature) * x @ a @ torch.linalg.solve(a + gamma * eye, x))
    assert closed.item() == pytest.approx(textbook.item(), rel=1e-10)
    mc = local_entropy(_quadratic(a), x, gamma, temperature, samples=200_000,
                       generator=torch.Generator().manual_seed(0))
    assert mc.item() == pytest.approx(closed.item(), abs=0.02)


def test_local_entropy_gradient_by_langevin_matches_closed_form():
    a = _spd(4, 6)
    x = torch.tensor([0.9, -0.5, 0.3, 0.1], dtype=torch.float64)
    gamma, temp = 1.5, 0.05
    _, exact = quadratic_local_entropy(a, x, gamma, temp)
    reps = 64  # independent chains (one per run), averaged
    est = local_entropy_grad(_quadratic(a), x.expand(reps, -1), gamma, temp, steps=400, lr=0.05,
                             generator=torch.Generator().manual_seed(0)).mean(0)
    torch.testing.assert_close(est, exact, rtol=0.03, atol=0.03 * exact.abs().max().item())
    # The Gibbs mean is the exact mean of the local measure: M^{-1} gamma x / T.
    mu = local_entropy_mean(_quadratic(a), x, gamma, temp, steps=400, lr=0.05,
                            generator=torch.Generator().manual_seed(1))
    assert torch.linalg.norm(mu - torch.linalg.solve(a + gamma * torch.eye(4, dtype=torch.float64), gamma * x)) < 0.1


def test_local_entropy_loss_gradient_is_minus_t_grad_f():
    a = _spd(3, 7)
    x0 = torch.tensor([0.5, 0.2, -0.3], dtype=torch.float64)
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    gamma, temp = 2.0, 1e-4  # nearly noiseless chain: the estimate is sharp
    loss = local_entropy_loss(_quadratic(a), x0 * w, gamma, temp, steps=600, lr=0.1,
                              generator=torch.Generator().manual_seed(0))
    (gw,) = torch.autograd.grad(loss, w)
    _, grad_f = quadratic_local_entropy(a, x0, gamma, temp)
    assert gw.item() == pytest.approx((-temp * grad_f @ x0).item(), rel=0.02)  # chain rule through x = w x0


def test_local_entropy_argument_checks():
    f = _quadratic(_spd(2, 0))
    with pytest.raises(LohpError, match="gamma"):
        local_entropy_mean(f, torch.zeros(2, dtype=torch.float64), 0.0)
    with pytest.raises(LohpError, match="steps"):
        local_entropy_mean(f, torch.zeros(2, dtype=torch.float64), 1.0, steps=0)
    with pytest.raises(LohpError, match="diverged"):
        local_entropy_mean(lambda x: 1e6 * (x ** 4).sum(-1), torch.ones(2, dtype=torch.float64), 1.0, lr=10.0)


# --------------------------------------------------------------------------- task losses and metrics
def test_task_loss_and_flatness_metrics_on_digits():
    from lohp.tasks import DigitsFamily

    fam = DigitsFamily()
    tasks = fam.heldout_tasks(3)
    thetas = torch.stack([t.init_theta(i) for i, t in enumerate(tasks)])
    batched = task_loss_fn(tasks)(thetas)
    singles = torch.stack([task_loss_fn(t)(th) for t, th in zip(tasks, thetas)])
    torch.testing.assert_close(batched, singles)
    torch.testing.assert_close(singles[0], torch.tensor(tasks[0].evaluate(thetas[0], "train")["loss"]))
    m = flatness_metrics(tasks, thetas, probes=8, eigen_iters=20)
    assert m["hessian_trace"].shape == (3,) and m["top_eigenvalue"].shape == (3,)
    assert (m["hessian_trace"] > 0).all() and (m["top_eigenvalue"] > 0).all()
    assert (m["top_eigenvalue"] <= m["hessian_trace"] * 1.5).all()
    with pytest.raises(LohpError, match="split"):
        task_loss_fn(tasks, "test")
    with pytest.raises(LohpError, match="expected weights"):
        task_loss_fn(tasks)(thetas[:2])


# --------------------------------------------------------------------------- on the default lo-hp
def _head_policy_and_batch(points=3):
    from lohp.losses import Batch
    from lohp.policy import LohpPolicy, PolicyConfig
    from lohp.policy.structure import ClassRowStructure

    st = ClassRowStructure.from_layout(ParamLayout.from_module(nn.Linear(4, 3)))
    torch.manual_seed(0)
    policy = LohpPolicy(st, 2, PolicyConfig(token_size=5, channels=8, depth=1), step_scale=torch.full((2,), 0.1),
                        condition_points=points)
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(2, 3, points, 4, generator=g)
    share = torch.rand(2, 3, points, generator=g) + 0.1
    cond = torch.cat([pts, (share / share.sum(-1, keepdim=True))[..., None]], -1)
    off = torch.randn(2, 3, st.size, generator=g) * 0.3
    return policy, Batch(off, cond, torch.Generator().manual_seed(2))


def test_lohp_hessian_trace_regularizer_is_the_exact_surrogate_trace_at_the_one_step_predictions():
    """With many probes the Hutchinson term is the exact Hessian trace of the condition's
    surrogate loss at s_j + mu(s_j) (torch.func.hessian as the reference), and it moves
    the policy's parameters (its gradient reaches them through mu)."""
    from lohp.losses import OnPolicyStates, loss_config

    policy, batch = _head_policy_and_batch()
    loss = OnPolicyStates(loss_config("lo-hp", flatness_weight=1.0, flatness_probes=4000, beta=1.0))
    b, n1, d = batch.offline.shape
    states = batch.offline[:, :-1].reshape(-1, d)
    jj = torch.arange(n1 - 1).repeat(b)
    cond = batch.cond.repeat_interleave(n1 - 1, 0)
    pred = states + policy.heads(states, jj, cond)[0]
    diag: dict[str, float] = {}
    term = loss.flatness(policy, batch, pred, n1 - 1, diag)
    exact = torch.stack([exact_trace(lambda th, c=c: policy.structure.surrogate_loss(c, th), p.detach())
                         for p, c in zip(pred, cond)]).mean()
    assert term.item() == pytest.approx(exact.item(), rel=0.05)
    grads = torch.autograd.grad(term, [p for p in policy.parameters() if p.requires_grad], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_lohp_local_entropy_regularizer_runs_and_only_lohp_style_losses_take_it():
    from lohp.losses import OnPolicyStates, loss_config

    policy, batch = _head_policy_and_batch()
    total, diag = OnPolicyStates(loss_config("lo-hp", entropy_weight=1.0))(policy, batch)
    assert torch.isfinite(total) and diag["entropy_loss"] >= 0
    with pytest.raises(LohpError, match="flatness regularizers act on weights the policy generates"):
        loss_config("lo-di", entropy_weight=1.0)
    with pytest.raises(LohpError, match="states formulation"):
        loss_config("lo-hp-v1", entropy_weight=1.0)
