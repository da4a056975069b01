"""Whole-network structure: rows round trip, closed-form condition features, unit equivariance."""

import pytest
import torch
from torch import nn

from lohp.layout import ParamLayout
from lohp.policy import LohpPolicy, PolicyConfig, make_structure
from lohp.policy.mlp_structure import MlpUnitStructure
from lohp.tasks import make_family


def _mlp(f=12, h=5, c=3):
    net = nn.Sequential(nn.Flatten(), nn.Linear(f, h), nn.ReLU(), nn.Linear(h, c))
    return net, ParamLayout.from_module(net, ("*",))


def test_a_one_hidden_layer_mlp_gets_the_unit_structure_and_rows_invert():
    st = make_structure(make_family("digits", head="mlp", hidden=7).sample(0).layout)
    assert isinstance(st, MlpUnitStructure) and st.n_groups == 7 and st.row_size == 64 + 1 + 2 * 5
    theta = torch.randn(3, st.size, dtype=torch.float64)
    assert torch.allclose(st.flat(st.rows(theta)), theta, atol=1e-12, rtol=0)


def test_rows_hold_each_units_own_weights():
    net, lay = _mlp()
    st = make_structure(lay)
    theta = lay.flatten(net)
    rows = st.rows(theta)
    w1, b1, w2, b2 = net[1].weight, net[1].bias, net[3].weight, net[3].bias
    for h in range(5):
        assert torch.equal(rows[h, :12], w1[h].detach())
        assert rows[h, 12] == b1[h]
        assert torch.equal(rows[h, 13:16], w2[:, h].detach())
        assert torch.equal(rows[h, 16:], b2.detach())


def test_condition_features_are_the_negative_gradient_on_the_class_means():
    """Against autograd: cross entropy of the class means labelled 0..C-1 through the MLP."""
    torch.manual_seed(0)
    net, lay = _mlp()
    st = make_structure(lay)
    theta = torch.randn(lay.size, dtype=torch.float64) * 0.5
    cond = torch.randn(3, 12, dtype=torch.float64)
    t = theta.clone().requires_grad_()
    logits = lay.functional(net.double())(t, cond)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(logits, torch.arange(3)), t)
    got = st.condition_rows(cond, theta)[..., 0]
    want = st.rows(-g)
    # a positive multiple of the negative gradient, scaled to unit RMS (not re-typed: checked as properties)
    assert got.square().mean().item() == pytest.approx(1.0, rel=1e-9)
    scale = (got * want).sum() / want.square().sum()
    assert scale.item() > 0 and torch.allclose(got, scale * want, atol=1e-10, rtol=0)


def test_the_policy_is_equivariant_to_the_order_of_hidden_units():
    torch.manual_seed(0)
    net, lay = _mlp()
    st = make_structure(lay)
    policy = LohpPolicy(st, 3, PolicyConfig(channels=8)).eval()
    for p in policy.parameters():  # FiLM and heads start at zero: give them values
        nn.init.normal_(p, std=0.2)
    s0 = torch.randn(2, lay.size) * 0.3
    cond = torch.randn(2, 3, 12)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permute = lambda th: st.flat(st.rows(th)[..., perm, :])  # noqa: E731
    out = policy.rollout(s0, cond)
    assert torch.allclose(policy.rollout(permute(s0), cond), permute(out), atol=1e-5)
    assert not torch.allclose(out, s0)
