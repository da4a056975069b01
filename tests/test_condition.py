"""Coreset conditions (lohp.condition): the summary itself, the weighted surrogate gradient of
every structure against autograd on the weighted points, m = 1 reproducing the class-means
features exactly, the policy's record of m, bad input, and a table whose classes share one
mean (where class means carry nothing and a coreset must)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from lohp.condition import class_means, coreset, split, summarize, weighted_means
from lohp.errors import LohpError
from lohp.layout import ParamLayout
from lohp.policy import LohpPolicy, PolicyConfig, make_structure
from lohp.policy.lora_structure import LoraStructure
from lohp.policy.mlp_structure import MlpUnitStructure
from lohp.policy.structure import ClassRowStructure


def _head(c, f, bias=True):
    return ParamLayout.from_module(torch.nn.Linear(f, c, bias=bias))


def _mlp(f, h, c):
    return ParamLayout.from_module(torch.nn.Sequential(torch.nn.Linear(f, h), torch.nn.ReLU(), torch.nn.Linear(h, c)))


def _lora(r, hdim, c):
    q = torch.nn.Module()
    q.lora_A = torch.nn.Parameter(torch.zeros(r, hdim))
    q.lora_B = torch.nn.Parameter(torch.zeros(hdim, r))
    m = torch.nn.Module()
    m.q = q
    m.head = torch.nn.Linear(hdim, c, bias=False)
    return ParamLayout.from_module(m)


def _rows(n_classes=3, per=(7, 9, 5), f=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n, f, generator=g) + 3 * c for c, n in enumerate(per)])
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(per)])
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


# --------------------------------------------------------------------------- the summary
def test_coreset_shares_sum_to_one_and_keep_the_class_mean():
    x, y = _rows()
    c = coreset(x, y, 3, 4)
    assert c.shape == (3, 4, 5)
    assert torch.allclose(c[..., -1].sum(-1), torch.ones(3))
    assert torch.allclose(weighted_means(c, 3, 4), class_means(x, y, 3), atol=1e-5)


def test_coreset_points_are_k_means_centres_of_their_rows():
    """Each point with a positive share is the mean of the class rows nearest to it (a Lloyd fixed point)."""
    x, y = _rows(per=(30, 40, 25))
    c = coreset(x, y, 3, 3, iterations=50)
    for k in range(3):
        rows = x[y == k]
        pts, share = c[k, :, :-1], c[k, :, -1]
        near = torch.cdist(rows, pts).argmin(-1)
        for i in range(3):
            if share[i] > 0:
                assert torch.allclose(rows[near == i].mean(0), pts[i], atol=1e-4)
                assert share[i] == pytest.approx((near == i).float().mean().item(), abs=1e-6)


def test_coreset_is_deterministic_and_exact_for_small_classes():
    x, y = _rows(per=(2, 9, 3))
    a, b = coreset(x, y, 3, 4), coreset(x, y, 3, 4)
    assert torch.equal(a, b)
    # class 0 has 2 rows: the rows themselves with share 1/2, then padding with share 0
    rows0 = x[y == 0]
    assert torch.equal(a[0, :2, :-1], rows0) and torch.equal(a[0, :, -1], torch.tensor([0.5, 0.5, 0.0, 0.0]))


def test_points_one_is_the_class_means_bit_for_bit():
    x, y = _rows()
    assert torch.equal(summarize(x, y, 3, 1), class_means(x, y, 3))


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_point_counts_are_refused_in_one_line(bad):
    x, y = _rows()
    with pytest.raises(LohpError, match="whole number >= 1") as err:
        summarize(x, y, 3, bad)
    assert "\n" not in str(err.value)


def test_a_condition_with_nan_is_refused():
    x, y = _rows()
    x[3, 1] = float("nan")
    with pytest.raises(LohpError, match="NaN or inf.*clean the data"):
        coreset(x, y, 3, 2)


# --------------------------------------------------------------------------- weighted surrogate gradient
def _coreset_cond(c, m, f, lead=(2,), seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(*lead, c, m, f, generator=g, dtype=torch.float64)
    share = torch.rand(*lead, c, m, generator=g, dtype=torch.float64) + 0.1
    share[..., -1] = 0.0 if m > 2 else share[..., -1]  # a padding point must not count
    share = share / share.sum(-1, keepdim=True)
    return torch.cat([pts, share[..., None]], -1)


def _surrogate_double_loop(cond, logits_fn, c, f):
    """sum_c sum_i share_ci / C * CE(model(x_ci), c), one point at a time (the reference)."""
    pts, share = cond[..., :f], cond[..., f]
    total = 0.0
    for ci in range(c):
        for i in range(pts.shape[-2]):
            lp = logits_fn(pts[..., ci, i, None, :])[..., 0, :].log_softmax(-1)[..., ci]  # one example [.., 1, F]
            total = total - (share[..., ci, i] * lp / c).sum()
    return total


@pytest.mark.parametrize("bias", [True, False])
def test_class_rows_gradient_feature_is_minus_the_autograd_gradient_on_weighted_points(bias):
    c, f, m = 4, 6, 3
    st = ClassRowStructure.from_layout(_head(c, f, bias))
    theta = torch.randn(2, st.size, dtype=torch.float64, requires_grad=True)
    cond = _coreset_cond(c, m, f)
    rows = st.rows(theta)
    w, b = rows[..., :f], (rows[..., f] if bias else None)
    loss = _surrogate_double_loop(cond, lambda x: x @ w.transpose(-1, -2) + (b[..., None, :] if bias else 0), c, f)
    (grad,) = torch.autograd.grad(loss, theta)
    feat = st.condition_rows(cond, theta.detach())[..., 0]                     # unit RMS of -grad rows
    expect = -st.rows(grad)
    expect = expect / expect.square().mean((-1, -2), keepdim=True).sqrt()
    assert torch.allclose(feat, expect, atol=1e-10)
    # the means channel: the share-weighted class mean
    pts, share = split(cond, c, f)
    assert torch.allclose(weighted_means(cond, c, f), (pts * share[..., None]).sum(-2))


def test_mlp_units_feature_is_minus_the_autograd_gradient_on_weighted_points():
    f, h, c, m = 5, 7, 3, 4
    st = MlpUnitStructure.from_layout(_mlp(f, h, c))
    theta = torch.randn(2, st.size, dtype=torch.float64, requires_grad=True)
    cond = _coreset_cond(c, m, f)
    w1, b1, w2, b2 = st.split(theta)

    def net(x):
        return (x @ w1.transpose(-1, -2) + b1[..., None, :]).clamp_min(0) @ w2.transpose(-1, -2) + b2[..., None, :]

    (grad,) = torch.autograd.grad(_surrogate_double_loop(cond, net, c, f), theta)
    feat = st.condition_rows(cond, theta.detach())[..., 0]
    expect = -st.rows(grad)
    # rows() copies b2 into every unit's row; flat() averages the copies: compare through flat
    got = st.flat(feat)
    want = st.flat(expect / expect.square().mean((-1, -2), keepdim=True).sqrt())
    assert torch.allclose(got, want, atol=1e-10)


def test_lora_head_feature_is_minus_the_autograd_gradient_on_weighted_points():
    r, hdim, c, m = 2, 6, 3, 3
    st = LoraStructure.from_layout(_lora(r, hdim, c))
    theta = torch.randn(2, st.size, dtype=torch.float64, requires_grad=True)
    cond = _coreset_cond(c, m, hdim)
    w = theta[..., st.head_offset:st.head_offset + c * hdim].reshape(2, c, hdim)
    (grad,) = torch.autograd.grad(_surrogate_double_loop(cond, lambda x: x @ w.transpose(-1, -2), c, hdim), theta)
    g_w = -grad[..., st.head_offset:st.head_offset + c * hdim].reshape(2, c, hdim)
    head = st.condition_rows(cond, theta.detach())[..., 2 * r:, 0]              # [2, H, C]
    expect = (g_w / g_w.square().mean((-1, -2), keepdim=True).sqrt()).transpose(-1, -2)
    assert torch.allclose(head, expect, atol=1e-10)


@pytest.mark.parametrize("kind", ["class-rows", "mlp-units"])
def test_one_point_per_class_gives_the_class_means_features_exactly(kind):
    """A coreset of m = 1 (share 1) and the class-means form: the same features, bit for bit."""
    c, f = 4, 6
    lay = _head(c, f) if kind == "class-rows" else _mlp(f, 7, c)
    st = make_structure(lay, kind=kind)
    means = torch.randn(2, c, f)
    theta = torch.randn(2, st.size)
    as_points = torch.cat([means[..., None, :], torch.ones(2, c, 1, 1)], -1)
    assert torch.equal(st.condition_rows(means, theta), st.condition_rows(as_points, theta))


def test_a_policy_refuses_a_condition_of_another_kind():
    st = ClassRowStructure.from_layout(_head(3, 4))
    policy = LohpPolicy(st, 2, PolicyConfig(token_size=4, channels=8, depth=1), condition_points=4)
    s = torch.zeros(1, st.size)
    with pytest.raises(LohpError, match="coreset of 4 points.*class means.*task.condition\\(4\\)"):
        policy(s, torch.zeros(1, dtype=torch.long), torch.zeros(1, 3, 4))
    policy(s, torch.zeros(1, dtype=torch.long), _coreset_cond(3, 4, 4, lead=(1,)).float())


# --------------------------------------------------------------------------- end to end
def _two_mode_table(path, n_classes=10, seed=0):
    """Every class has mean 0 (up to the random training split): 3/4 of its rows near a_c, 1/4
    near -3 a_c (a skewed pair), a_c along its own axis. A linear head's cross-entropy is
    minimal at the origin when class means agree, so the target is a small MLP, which can
    separate the modes; class means say (almost) nothing."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    f = n_classes
    for c in range(n_classes):
        a = 2.0 * np.eye(f)[c]
        for centre, n in ((a, 48), (-3 * a, 16)):
            xs.append(centre + rng.normal(0, 0.25, (n, f)))
            ys += [f"c{c}"] * n
    x = np.concatenate(xs)
    with open(path, "w") as fh:
        fh.write(",".join([f"f{i}" for i in range(f)] + ["label"]) + "\n")
        for row, lab in zip(x, ys):
            fh.write(",".join(f"{v:.5f}" for v in row) + f",{lab}\n")
    return path


@pytest.mark.slow
def test_coreset_lohp_learns_where_class_means_are_blind(tmp_path):
    from lohp.generation import Generator
    from lohp.training import train
    from lohp.trajectories import make_config, prepare

    data = _two_mode_table(tmp_path / "modes.csv")
    fam = {"path": str(data), "n_way": 3, "standardize": False, "hidden": 16}
    store = prepare(tmp_path / "store", make_config(family="table", family_config=fam, optimizers=("adam",),
                                                    hparams={"adam": {"lr": 0.03}}, tasks=24, steps=16,
                                                    batch_size=32, record_every=2))
    acc = {}
    for m in (1, 4):
        out = tmp_path / f"policy-m{m}"
        train(store, out, "lo-hp", k=2, policy_options={"token_size": 8, "channels": 16, "depth": 1,
                                                          "condition_points": m},
              train_options={"iterations": 100, "batch_size": 8, "eval_every": 1000, "log_every": 50})
        gen = Generator.load(out)
        assert gen.policy.condition_points == m
        tasks = gen.family().heldout_tasks(12)
        theta = gen.generate_batch(tasks)
        acc[m] = float(np.mean([t.evaluate(th)["accuracy"] for t, th in zip(tasks, theta)]))
    chance = 1 / 3
    assert acc[4] >= chance + 0.2, acc
    assert acc[4] > acc[1] + 0.15, acc


def test_explicit_points_above_a_class_rows_are_refused_before_training(tmp_path, small_store_path):
    """The small store's digits tasks have tens of rows per class: 10,000 points cannot fit."""
    r = subprocess.run([sys.executable, "-m", "lohp", "train", "--store", str(small_store_path), "--out",
                        str(tmp_path / "p"), "--condition-points", "10000", "--iterations", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "--condition-points" in line and "fewer" in line
    assert not (tmp_path / "p" / "policy.json").exists()
    r = subprocess.run([sys.executable, "-m", "lohp", "train", "--store", str(small_store_path), "--out",
                        str(tmp_path / "q"), "--condition-points", "0", "--iterations", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "whole number >= 1" in r.stderr and "\n" not in r.stderr.strip()


def test_the_policy_records_its_condition(tmp_path, small_store_path):
    from lohp.training import train

    out = tmp_path / "p"
    train(small_store_path, out, "lo-hp", k=2, policy_options={"condition_points": 3, "token_size": 8, "channels": 8,
                                                               "depth": 1},
          train_options={"iterations": 2, "batch_size": 4})
    import json

    meta = json.loads((out / "policy.json").read_text())
    assert meta["condition"]["points"] == 3 and meta["condition"]["kind"] == "coreset"
    # the default: DEFAULT_POINTS capped at the smallest class, and the cap recorded
    out2 = tmp_path / "d"
    train(small_store_path, out2, "lo-hp", k=2, policy_options={"token_size": 8, "channels": 8, "depth": 1},
          train_options={"iterations": 2, "batch_size": 4})
    cond = json.loads((out2 / "policy.json").read_text())["condition"]
    from lohp.condition import DEFAULT_POINTS

    assert cond["requested"] is None and cond["points"] == min(DEFAULT_POINTS, cond["min_class_rows"])


def test_a_coreset_with_more_points_than_any_class_has_rows_is_the_rows_themselves():
    """Every class smaller than m (a 4-shot task under an 8-point policy): each class is its
    rows exactly (share 1/rows) plus zero-share padding, shape [C, m, F + 1]."""
    from lohp.condition import coreset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    out = coreset(x, y, 2, 8)
    assert out.shape == (2, 8, 6)
    for c, rows in ((0, x[:3]), (1, x[3:])):
        n = len(rows)
        assert torch.equal(out[c, :n, :5], rows)
        assert torch.allclose(out[c, :n, 5], torch.full((n,), 1.0 / n))
        assert torch.equal(out[c, n:, 5], torch.zeros(8 - n))
