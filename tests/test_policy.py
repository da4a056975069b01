"""The policy: structure round trip, class-permutation equivariance, Gaussian heads."""

import dataclasses

import pytest
import torch

from lohp.errors import LohpError
from lohp.layout import ParamLayout
from lohp.policy import ClassRowStructure, LohpPolicy, PolicyConfig, gaussian_log_prob, make_structure
from lohp.tasks import make_family
from tests.helpers import tiny_policy


def test_rows_and_flat_are_inverse_and_follow_the_layout():
    task = make_family("digits", n_way=4).sample(0)
    st = make_structure(task.layout)
    theta = torch.randn(2, task.layout.size)
    rows = st.rows(theta)
    named = task.layout.unflatten(theta)
    assert torch.equal(rows[..., :64], named["weight"])
    assert torch.equal(rows[..., 64], named["bias"])
    assert torch.equal(st.flat(rows), theta)


def test_structure_refuses_a_layout_no_structure_fits():
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4), torch.nn.ReLU(),
                              torch.nn.Linear(4, 3))
    with pytest.raises(LohpError, match="no policy structure fits"):
        make_structure(ParamLayout.from_module(net, ("*",)))
    with pytest.raises(LohpError, match="classifier head"):
        ClassRowStructure.from_layout(make_family("digits", head="mlp").sample(0).layout)


def _permute_rows(st: ClassRowStructure, theta: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return st.flat(st.rows(theta)[..., perm, :])


def test_relabelling_the_classes_permutes_the_generated_rows():
    """The digits task relabelled: condition rows, s_0 rows and output rows permute together."""
    policy, thetas, cond = tiny_policy(n_steps=3, n_way=3, batch=2)
    policy.eval()
    st = policy.structure
    perm = torch.tensor([2, 0, 1])
    s0 = thetas[:, 0]
    out = policy.rollout(s0, cond)
    out_perm = policy.rollout(_permute_rows(st, s0, perm), cond[:, perm])
    assert torch.allclose(out_perm, _permute_rows(st, out, perm), atol=1e-5)
    # ...and it is not trivially symmetric: the classes get different rows.
    rows = st.rows(out)
    assert not torch.allclose(rows[:, 0], rows[:, 1])


def test_relabelled_digits_task_gives_permuted_condition():
    fam = make_family("digits", n_way=3)
    task = fam.sample(5)
    classes = task.info["classes"]
    # The same class set with another label order, built by hand.
    perm = [2, 0, 1]
    y_new = torch.tensor(perm)[task.y_train]  # old label l -> new label perm[l]
    relabelled = dataclasses.replace(task, y_train=y_new)
    # Reference: a plain per-label loop over the training images (new label perm[l] holds old label l).
    want = torch.stack([task.x_train[y_new == k].mean(0) for k in range(3)])
    torch.testing.assert_close(relabelled.condition(), want, rtol=1e-6, atol=1e-6)
    assert torch.allclose(relabelled.condition()[perm], task.condition(), atol=1e-6)
    assert not torch.allclose(relabelled.condition(), task.condition())  # the relabelling did change the rows
    assert len(classes) == 3


def test_gaussian_log_prob_matches_torch_distributions():
    x, mean = torch.randn(4, 7), torch.randn(4, 7)
    std = torch.rand(4) + 0.1
    want = torch.distributions.Normal(mean, std[:, None]).log_prob(x).sum(-1)
    assert torch.allclose(gaussian_log_prob(x, mean, std), want, atol=1e-5)


def _normal(mean: torch.Tensor, std: float) -> torch.distributions.Normal:
    return torch.distributions.Normal(mean.double(), std)


@pytest.mark.parametrize("kind", ["fixed", "bridge", "learned"])
def test_backward_kinds_match_torch_distributions(kind):
    """log P_B(s_j | s_{j+1}) against torch.distributions. tiny_policy's step scale is 0.05 at
    every step and the default sigma_b is 2.5 (in units of the step scale), so the absolute
    backward std is 2.5 * 0.05 = 0.125."""
    policy, thetas, cond = tiny_policy(n_steps=3, backward=kind)
    sig = 0.125
    j = torch.tensor([0, 1])
    s0, s, s_next = thetas[:, 0], thetas[:, 1], thetas[:, 2]
    _, nu = policy.heads(s_next, j + 1, cond, backward=True)
    lp = policy.log_pb(s, s_next, j, nu, s0)
    assert lp.shape == (2,) and torch.isfinite(lp).all()
    if kind == "fixed":  # s_j ~ N(s_{j+1}, sig^2)
        want = _normal(s_next, sig).log_prob(s.double()).sum(-1)
    elif kind == "learned":  # s_j ~ N(s_{j+1} + nu, sig^2)
        want = _normal(s_next + nu, sig).log_prob(s.double()).sum(-1)
    else:
        # Brownian bridge pinned at s_0 (a random walk with step std sig started at s_0), by
        # Bayes' rule: p(s_j | s_{j+1}, s_0) = p(s_j | s_0) p(s_{j+1} | s_j) / p(s_{j+1} | s_0),
        # with s_j | s_0 ~ N(s_0, j sig^2). At j = 0 the step back to s_0 is deterministic: 0.
        jj = 1
        want1 = (_normal(s0[1], jj ** 0.5 * sig).log_prob(s[1].double()).sum()
                 + _normal(s[1], sig).log_prob(s_next[1].double()).sum()
                 - _normal(s0[1], (jj + 1) ** 0.5 * sig).log_prob(s_next[1].double()).sum())
        want = torch.stack([torch.zeros((), dtype=torch.float64), want1])
    torch.testing.assert_close(lp.double(), want, rtol=1e-5, atol=1e-3)


def test_forward_std_is_in_units_of_the_step_scale():
    """sigma_f = 0.5 (relative) over step scales (0.1, 0.2, 0.4): absolute stds 0.05, 0.1, 0.2,
    both as the number the policy reports and as the spread of its sampled steps."""
    policy, _, cond = tiny_policy(n_steps=3)
    st = policy.structure
    torch.manual_seed(0)
    policy = LohpPolicy(st, 3, PolicyConfig(channels=8, token_size=4, depth=1, sigma_f=0.5),
                        step_scale=torch.tensor([0.1, 0.2, 0.4]), theta_scale=0.1, cond_scale=0.3).eval()
    torch.testing.assert_close(policy.sigma_f(torch.tensor([0, 1, 2])), torch.tensor([0.05, 0.1, 0.2]))
    # The sampled rollout's noise: s_{j+1} - s_j - mu(s_j) has that standard deviation
    # (64 runs x 195 coordinates per step, so the sample std is within about 1% of it).
    s0 = 0.1 * torch.randn(64, st.size, generator=torch.Generator().manual_seed(1))
    c = cond[:1].expand(64, -1, -1)
    with torch.no_grad():
        states = policy.rollout(s0, c, temperature=1.0, generator=torch.Generator().manual_seed(2),
                                return_states=True)
        for j, want in enumerate((0.05, 0.1, 0.2)):
            jj = torch.full((64,), j, dtype=torch.long)
            noise = states[:, j + 1] - states[:, j] - policy(states[:, j], jj, c)
            assert noise.std().item() == pytest.approx(want, rel=0.05), j


def test_sampling_mode_differs_and_mean_mode_is_deterministic():
    policy, thetas, cond = tiny_policy(n_steps=3)
    policy.eval()
    a = policy.rollout(thetas[:, 0], cond)
    b = policy.rollout(thetas[:, 0], cond)
    assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    s1 = policy.rollout(thetas[:, 0], cond, temperature=1.0, generator=g1)
    s2 = policy.rollout(thetas[:, 0], cond, temperature=1.0, generator=g2)
    assert torch.equal(s1, s2) and not torch.allclose(s1, a)


def test_eval_cache_of_time_embedding_matches_training_mode():
    policy, thetas, cond = tiny_policy(n_steps=3)
    j = torch.tensor([1, 2])
    policy.train()
    a = policy(thetas[:, 1], j, cond)
    policy.eval()
    b = policy(thetas[:, 1], j, cond)
    assert torch.allclose(a, b, atol=1e-6)
