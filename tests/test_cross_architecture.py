"""Cross-architecture generation: one policy, another hidden width or class count.

The reference is the structure's own math, not the policy code: a net whose every hidden
unit is duplicated has every per-unit input duplicated and every pooled (mean) context
unchanged, so given the same per-unit features the policy's step on the wide net must be
the narrow net's step, duplicated.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lohp.errors import LohpError
from lohp.layout import ParamLayout
from lohp.policy import LohpPolicy, PolicyConfig, make_structure
from lohp.policy.structure import retarget


def _mlp(f=6, h=4, c=3):
    net = nn.Sequential(nn.Linear(f, h), nn.ReLU(), nn.Linear(h, c))
    return net, ParamLayout.from_module(net, ("*",))


def _policy(st, n_steps=3):
    torch.manual_seed(0)
    policy = LohpPolicy(st, n_steps, PolicyConfig(channels=8, token_size=4, depth=1)).eval()
    for p in policy.parameters():  # FiLM and heads start at zero: give them values
        nn.init.normal_(p, std=0.2)
    return policy


def test_duplicated_hidden_units_get_the_duplicated_step():
    _, lay4 = _mlp(h=4)
    _, lay8 = _mlp(h=8)
    st4 = make_structure(lay4)
    policy = _policy(st4)
    st8 = retarget(st4, lay8)
    assert st8.n_hidden == 8 and st8.row_size == st4.row_size
    wide = policy.retargeted(st8)
    assert wide.structure is st8 and policy.structure is st4  # same parameters, two structures
    assert wide.backbone is policy.backbone

    torch.manual_seed(1)
    s4 = torch.randn(2, st4.size) * 0.3
    cond = torch.randn(2, 3, 6)
    w1, b1, w2, b2 = st4.split(s4)
    dup = torch.arange(4).repeat(2)  # units 0..3, 0..3
    parts = {"0.weight": w1[:, dup], "0.bias": b1[:, dup], "2.weight": w2[:, :, dup], "2.bias": b2}
    s8 = torch.cat([parts[e.name].reshape(2, -1) for e in sorted(lay8.entries, key=lambda e: e.offset)], -1)
    assert torch.equal(st8.rows(s8), st4.rows(s4)[:, dup])

    crow4 = st4.condition_rows(cond, s4)
    wide.__dict__["structure"] = _Fixed(st8, crow4[:, dup])  # the same per-unit features, duplicated
    j = torch.tensor([1, 2])
    mu4 = policy(s4, j, cond)
    mu8 = wide(s8, j, cond)
    torch.testing.assert_close(st8.rows(mu8), st4.rows(mu4)[:, dup], atol=1e-5, rtol=1e-4)


class _Fixed:
    """A structure that hands out given condition features (everything else delegated)."""

    def __init__(self, st, crow):
        self._st, self._crow = st, crow

    def condition_rows(self, cond, theta):
        return self._crow

    def __getattr__(self, name):
        return getattr(self._st, name)


def test_a_head_policy_serves_another_class_count_but_not_other_features():
    lay5 = ParamLayout.from_module(nn.Linear(8, 5), ("*",))
    st5 = make_structure(lay5)
    st3 = retarget(st5, ParamLayout.from_module(nn.Linear(8, 3), ("*",)))
    assert st3.n_classes == 3
    policy = _policy(st5).retargeted(st3)
    out = policy(torch.randn(2, st3.size), torch.tensor([0, 1]), torch.randn(2, 3, 8))
    assert out.shape == (2, st3.size) and torch.isfinite(out).all()
    with pytest.raises(LohpError, match="n_features 9 \\(trained: 8\\); only n_classes may differ"):
        retarget(st5, ParamLayout.from_module(nn.Linear(9, 5), ("*",)))


def test_an_mlp_policy_refuses_another_class_count_or_input_size():
    _, lay = _mlp()
    st = make_structure(lay)
    with pytest.raises(LohpError, match="n_classes 5 \\(trained: 3\\); only n_hidden may differ"):
        retarget(st, _mlp(c=5)[1])
    with pytest.raises(LohpError, match="cannot serve this model: the mlp-units policy generates"):
        retarget(st, ParamLayout.from_module(nn.Linear(6, 3), ("*",)))


def test_generate_for_another_width_through_the_cli(tmp_path, cli):
    """Train on a 4-unit MLP head of digits, generate for 8 units; 5 classes refused."""
    from lohp import api

    store = tmp_path / "store"
    api.prepare(store, family_config={"n_way": 3, "head": "mlp", "hidden": 4}, optimizers=("adam",), tasks=3,
                steps=4, seed=0)
    api.train(store, tmp_path / "p", "lo-hp", policy_options={"channels": 8, "token_size": 8, "depth": 1},
              train_options={"iterations": 3, "batch_size": 3, "eval_tasks": 1})
    code, out, err = cli("generate", "--policy", tmp_path / "p", "--out", tmp_path / "w.safetensors",
                         "--family-option", "hidden=8", "--no-latency")
    assert code == 0, err
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "w.safetensors"))["0.weight"].shape[0] == 8 or \
        any(v.shape[0] == 8 for v in load_file(str(tmp_path / "w.safetensors")).values())
    code, out, err = cli("generate", "--policy", tmp_path / "p", "--out", tmp_path / "x.safetensors",
                         "--family-option", "n_way=5")
    assert code == 2 and "n_classes 5 (trained: 3)" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.safetensors").exists()
