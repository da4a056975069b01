"""The policy: structure round trip, class-permutation equivariance, Gaussian heads."""


import pytest
import torch

from lohp.errors import LohpError
from lohp.layout import ParamLayout
from lohp.policy import ClassRowStructure, gaussian_log_prob, make_structure
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
    # Build the same class set with another label order by hand.
    perm = [2, 0, 1]
    y_new = torch.tensor(perm)[task.y_train]  # old label l -> new label perm[l]
    from lohp.tasks import class_means

    c_new = class_means(task.x_train, y_new, 3)
    assert torch.allclose(c_new[perm], task.condition())
    assert len(classes) == 3


def test_gaussian_log_prob_matches_torch_distributions():
    x, mean = torch.randn(4, 7), torch.randn(4, 7)
    std = torch.rand(4) + 0.1
    want = torch.distributions.Normal(mean, std[:, None]).log_prob(x).sum(-1)
    assert torch.allclose(gaussian_log_prob(x, mean, std), want, atol=1e-5)


@pytest.mark.parametrize("kind", ["fixed", "bridge", "learned"])
def test_backward_kinds_give_finite_log_probs(kind):
    policy, thetas, cond = tiny_policy(n_steps=3, backward=kind)
    j = torch.tensor([0, 1])
    _, nu = policy.heads(thetas[:, 2], j + 1, cond, backward=True)
    lp = policy.log_pb(thetas[:, 1], thetas[:, 2], j, nu, thetas[:, 0])
    assert lp.shape == (2,) and torch.isfinite(lp).all()
    if kind == "bridge":  # the step back to s_0 is deterministic: contributes 0
        assert lp[0].item() == 0.0
    if kind == "fixed":
        want = gaussian_log_prob(thetas[:, 1], thetas[:, 2], policy.sigma_b(j))
        assert torch.allclose(lp, want)


def test_forward_std_is_in_units_of_the_step_scale():
    policy, _, _ = tiny_policy(n_steps=3)
    j = torch.tensor([0, 2])
    assert torch.allclose(policy.sigma_f(j), policy.config.sigma_f * policy.step_scale[j])


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
