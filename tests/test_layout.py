"""ParamLayout: selection by name patterns, flat <-> named, batched evaluation, (de)serialising."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lohp.errors import LohpError
from lohp.layout import LayoutEntry, ParamLayout


def mlp(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).to(dtype)


# ------------------------------------------------------------------------- selection
def test_select_all_parameters_in_module_order():
    m = mlp()
    layout = ParamLayout.from_module(m)
    assert layout.names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert [e.shape for e in layout.entries] == [(3, 4), (3,), (2, 3), (2,)]
    assert [e.offset for e in layout.entries] == [0, 12, 15, 21]
    assert layout.size == 12 + 3 + 6 + 2 == sum(p.numel() for p in m.parameters())
    assert layout.dtype == torch.float32


@pytest.mark.parametrize("patterns, names", [
    (("2.*",), ("2.weight", "2.bias")),
    (("*.bias",), ("0.bias", "2.bias")),
    (("0.weight", "2.bias"), ("0.weight", "2.bias")),
    (("2.bias", "0.weight"), ("0.weight", "2.bias")),  # module order, not pattern order
    (("*weight", "2.*"), ("0.weight", "2.weight", "2.bias")),  # no duplicates
])
def test_select_by_patterns(patterns, names):
    m = mlp()
    layout = ParamLayout.from_module(m, patterns)
    assert layout.names == names
    params = dict(m.named_parameters())
    assert layout.size == sum(params[n].numel() for n in names)
    offset = 0
    for e in layout.entries:
        assert e.offset == offset and e.shape == tuple(params[e.name].shape)
        offset += e.numel


def test_no_match_is_a_clear_error():
    with pytest.raises(LohpError, match="no parameter matches"):
        ParamLayout.from_module(mlp(), ("head.*",))


def test_mixed_dtypes_is_a_clear_error():
    m = mlp()
    m[2].double()
    with pytest.raises(LohpError, match="dtype"):
        ParamLayout.from_module(m)


def test_float64_module_keeps_its_dtype():
    layout = ParamLayout.from_module(mlp(dtype=torch.float64))
    assert layout.dtype == torch.float64
    assert layout.flatten(mlp(dtype=torch.float64)).dtype == torch.float64


# ------------------------------------------------------------------------- flat <-> named
def test_flatten_matches_manual_concatenation():
    m = mlp(1)
    layout = ParamLayout.from_module(m, ("0.weight", "2.bias"))
    expected = torch.cat([m[0].weight.detach().reshape(-1), m[2].bias.detach()])
    assert torch.equal(layout.flatten(m), expected)
    # a name -> tensor dict works as well as a module
    assert torch.equal(layout.flatten(dict(m.named_parameters())), expected)


def test_flatten_unflatten_round_trip():
    m = mlp(2)
    layout = ParamLayout.from_module(m)
    named = layout.unflatten(layout.flatten(m))
    for n, p in m.named_parameters():
        assert torch.equal(named[n], p.detach())
    theta = torch.randn(layout.size)
    assert torch.equal(layout.flatten(layout.unflatten(theta)), theta)


def test_unflatten_keeps_batch_dimensions():
    layout = ParamLayout.from_module(mlp())
    thetas = torch.randn(5, 7, layout.size)
    named = layout.unflatten(thetas)
    assert named["0.weight"].shape == (5, 7, 3, 4)
    assert named["2.bias"].shape == (5, 7, 2)
    for i in range(5):
        for j in range(7):
            single = layout.unflatten(thetas[i, j])
            for n in layout.names:
                assert torch.equal(named[n][i, j], single[n])


def test_unflatten_wrong_size_is_a_clear_error():
    layout = ParamLayout.from_module(mlp())
    with pytest.raises(LohpError, match="24 values.*needs 23"):
        layout.unflatten(torch.zeros(layout.size + 1))


def test_flatten_missing_parameter_is_a_clear_error():
    layout = ParamLayout.from_module(mlp())
    with pytest.raises(LohpError, match="missing"):
        layout.flatten(nn.Linear(4, 3))


# ------------------------------------------------------------------------- evaluation
def _loop_reference(module: nn.Module, layout: ParamLayout, thetas: torch.Tensor, xs) -> torch.Tensor:
    """The plain way: copy each vector into a fresh copy of the module and call it."""
    outs = []
    for i, theta in enumerate(thetas):
        m = copy.deepcopy(module)
        named = dict(m.named_parameters())
        with torch.no_grad():
            for e in layout.entries:
                named[e.name].copy_(theta[e.offset:e.offset + e.numel].reshape(e.shape))
        x = xs if xs.dim() == 2 else xs[i]
        with torch.no_grad():
            outs.append(m(x))
    return torch.stack(outs)


@pytest.mark.parametrize("patterns", [("*",), ("2.*",), ("0.weight",)])
def test_batched_evaluation_equals_per_vector_loop(patterns):
    m = mlp(3)
    layout = ParamLayout.from_module(m, patterns)
    g = torch.Generator().manual_seed(0)
    thetas = torch.randn(6, layout.size, generator=g)
    xs = torch.randn(6, 10, 4, generator=g)
    got = layout.batched(m)(thetas, xs)
    want = _loop_reference(m, layout, thetas, xs)
    assert got.shape == (6, 10, 2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

    shared = xs[0]
    got_shared = layout.batched(m, shared_input=True)(thetas, shared)
    torch.testing.assert_close(got_shared, _loop_reference(m, layout, thetas, shared), rtol=1e-6, atol=1e-6)

    # single vector through functional()
    torch.testing.assert_close(layout.functional(m)(thetas[2], xs[2]), want[2], rtol=1e-6, atol=1e-6)


def test_batched_evaluation_leaves_module_untouched_and_uses_frozen_rest():
    m = mlp(4)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    layout = ParamLayout.from_module(m, ("2.*",))
    thetas = torch.randn(3, layout.size)
    layout.batched(m, shared_input=True)(thetas, torch.randn(5, 4))
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n])


def test_functional_gradient_matches_module_autograd():
    m = mlp(5)
    layout = ParamLayout.from_module(m, ("0.weight", "2.*"))
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    theta = layout.flatten(m).requires_grad_(True)
    loss = nn.functional.cross_entropy(layout.functional(m)(theta, x), y)
    (g,) = torch.autograd.grad(loss, theta)

    ref = copy.deepcopy(m)
    nn.functional.cross_entropy(ref(x), y).backward()
    want = torch.cat([ref[0].weight.grad.reshape(-1), ref[2].weight.grad.reshape(-1), ref[2].bias.grad])
    torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-7)


def test_batched_evaluation_with_buffers():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).eval()
    m[1].running_mean.normal_()
    m[1].running_var.uniform_(0.5, 2.0)
    layout = ParamLayout.from_module(m, ("0.*", "2.*"))
    thetas = torch.randn(4, layout.size)
    x = torch.randn(6, 4)
    torch.testing.assert_close(layout.batched(m, shared_input=True)(thetas, x),
                               _loop_reference(m, layout, thetas, x), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------- (de)serialise and checks
def test_to_dict_from_dict_round_trip_through_json():
    for dtype in (torch.float32, torch.float64):
        layout = ParamLayout.from_module(mlp(dtype=dtype), ("0.*", "2.bias"))
        d = json.loads(json.dumps(layout.to_dict()))
        back = ParamLayout.from_dict(d)
        assert back == layout and hash(back) == hash(layout)
        assert back.dtype == dtype and back.size == layout.size and back.names == layout.names
        assert d["size"] == layout.size


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("entries"),
    lambda d: d.update(dtype="int7"),
    lambda d: d["entries"][0].pop("shape"),
    lambda d: d.update(size=d["size"] + 1),
])
def test_from_dict_malformed_is_a_clear_error(damage):
    d = ParamLayout.from_module(mlp()).to_dict()
    damage(d)
    with pytest.raises(LohpError, match="malformed"):
        ParamLayout.from_dict(d)


def test_check_matches():
    a = ParamLayout.from_module(mlp())
    a.check_matches(ParamLayout.from_module(mlp(9)))  # same architecture, other values: fine
    other_shape = ParamLayout.from_module(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)))
    with pytest.raises(LohpError, match="does not match"):
        a.check_matches(other_shape)
    with pytest.raises(LohpError, match="does not match"):
        a.check_matches(ParamLayout.from_module(mlp(), ("2.*",)))
    with pytest.raises(LohpError, match="dtype"):
        a.check_matches(ParamLayout.from_module(mlp(dtype=torch.float64)))
    # same shapes, other names
    renamed = ParamLayout([LayoutEntry("w" + e.name, e.shape, e.offset) for e in a.entries])
    with pytest.raises(LohpError, match="does not match"):
        a.check_matches(renamed)


def test_load_into_copies_the_subset_and_keeps_the_rest():
    m = mlp(6)
    layout = ParamLayout.from_module(m, ("2.*",))
    frozen = m[0].weight.detach().clone(), m[0].bias.detach().clone()
    theta = torch.randn(layout.size)
    out = layout.load_into(m, theta)
    assert out is m
    assert torch.equal(m[2].weight.detach(), theta[:6].reshape(2, 3))
    assert torch.equal(m[2].bias.detach(), theta[6:])
    assert torch.equal(m[0].weight.detach(), frozen[0]) and torch.equal(m[0].bias.detach(), frozen[1])
    assert torch.equal(layout.flatten(m), theta)
    # the module computes what the functional form computes
    x = torch.randn(3, 4)
    torch.testing.assert_close(layout.functional(m)(theta, x), m(x))


def test_load_into_mismatched_module_is_a_clear_error():
    layout = ParamLayout.from_module(mlp())
    with pytest.raises(LohpError):
        layout.load_into(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)), torch.zeros(layout.size))
    with pytest.raises(LohpError):
        layout.load_into(mlp(), torch.zeros(layout.size - 1))
