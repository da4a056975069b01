"""The vectorised SubTB residuals and weights against a plain double loop."""

import itertools

import pytest
import torch

from lohp.errors import LohpError
from lohp.losses import LossConfig, loss_config, subtb_loss, subtb_residuals, subtb_weights
from tests.helpers import tiny_policy


def reference_loss(log_f, log_pf, log_pb, lam):
    """Straight from the definition: every segment m < n, weights lambda^(n-m) normalised."""
    n1 = len(log_f)
    num, den = 0.0, 0.0
    for m in range(n1):
        for n in range(m + 1, n1):
            delta = log_f[m] - log_f[n]
            for j in range(m, n):
                delta += log_pf[j] - log_pb[j]
            w = lam ** (n - m)
            num += w * delta ** 2
            den += w
    return num / den


@pytest.mark.parametrize("n_steps,lam", list(itertools.product([1, 2, 5, 9], [0.5, 0.9, 1.0, 1.5])))
def test_vectorised_subtb_matches_double_loop(n_steps, lam):
    g = torch.Generator().manual_seed(n_steps)
    log_f = torch.randn(3, n_steps + 1, generator=g, dtype=torch.float64)
    log_pf = torch.randn(3, n_steps, generator=g, dtype=torch.float64)
    log_pb = torch.randn(3, n_steps, generator=g, dtype=torch.float64)
    w = subtb_weights(n_steps + 1, lam, dtype=torch.float64)
    got = subtb_loss(subtb_residuals(log_f, log_pf, log_pb), w)
    for b in range(3):
        want = reference_loss(log_f[b].tolist(), log_pf[b].tolist(), log_pb[b].tolist(), lam)
        assert got[b].item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_residual_entries_are_the_segment_residuals():
    g = torch.Generator().manual_seed(0)
    log_f, log_pf, log_pb = torch.randn(6, generator=g), torch.randn(5, generator=g), torch.randn(5, generator=g)
    delta = subtb_residuals(log_f, log_pf, log_pb)
    for m in range(6):
        for n in range(m + 1, 6):
            want = log_f[m] - log_f[n] + (log_pf[m:n] - log_pb[m:n]).sum()
            assert delta[m, n].item() == pytest.approx(want.item(), abs=1e-5)


def test_weights_vanish_off_the_upper_triangle_and_sum_to_one():
    w = subtb_weights(7, 0.9)
    assert torch.all(torch.tril(w) == 0)
    assert w.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_hybrid_mix_weights_terms_by_beta(k, beta):
    """The hybrid loss (unnormalised) equals (1-beta) * on + beta * off computed separately."""
    from lohp.losses import Batch, HybridSubTB
    policy, thetas, cond = tiny_policy(n_steps=8 // k)
    cfg = LossConfig(method="lo-hp-v1", formulation="subtb", k=k, beta=beta, normalize=False)
    loss = HybridSubTB(cfg)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    total, _ = loss(policy, Batch(thetas, cond, gen()))
    on = loss.on_policy(policy, Batch(thetas, cond, gen()))[0] if beta < 1 else torch.tensor(0.0)
    off = loss.off_policy(policy, Batch(thetas, cond, gen()))[0] if beta > 0 else torch.tensor(0.0)
    assert total.item() == pytest.approx(((1 - beta) * on + beta * off).item(), rel=1e-5)


def test_bad_loss_options_are_refused():
    with pytest.raises(LohpError):
        loss_config("nope")
    with pytest.raises(LohpError):
        loss_config("lo-hp", beta=1.5)
    with pytest.raises(LohpError):
        loss_config("lo-hp", rollout="sideways")
    with pytest.raises(LohpError):
        loss_config("lo-hp", colour="red")


def test_flatness_regularizer_adds_weight_times_hutchinson_trace():
    """lo-hp + flatness = lo-hp + weight * (Hutchinson trace of the task loss at s_N), and its
    gradient reaches the policy."""
    from lohp.flatness import exact_trace
    from lohp.losses import Batch, HybridSubTB
    policy, thetas, cond = tiny_policy(n_steps=2)
    target = torch.randn(thetas.shape[-1])

    def task_loss(rows):
        return lambda th: ((th - target) ** 4).sum(-1) * 0.01  # a non-quadratic per-run loss

    base = HybridSubTB(LossConfig(method="lo-hp-v1", formulation="subtb", k=2, normalize=False))
    reg = HybridSubTB(LossConfig(method="lo-hp-v1", formulation="subtb", k=2, normalize=False, flatness_weight=0.5, flatness_probes=64))
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    plain, _ = base(policy, Batch(thetas, cond, g(), task_loss))
    total, diag = reg(policy, Batch(thetas, cond, g(), task_loss))
    on, (s_final, rows) = base.on_policy(policy, Batch(thetas, cond, g(), task_loss))
    exact = torch.stack([exact_trace(task_loss(None), s.detach()) for s in s_final]).mean()
    assert diag["hessian_trace"] == pytest.approx(exact.item(), rel=0.15)
    assert total.item() == pytest.approx(plain.item() + 0.5 * diag["hessian_trace"], rel=1e-4)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_flatness_needs_a_method_that_generates():
    with pytest.raises(LohpError, match="act on weights the policy generates"):
        loss_config("lo-di", flatness_weight=0.1)
    with pytest.raises(LohpError, match="act on weights the policy generates"):
        loss_config("lo-hp-v1", flatness_weight=0.1, beta=1.0)
    assert loss_config("lo-hp", flatness_weight=0.1).flatness_weight == 0.1
