"""Tasks and the digits family, checked against scikit-learn's raw digits data."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from lohp.errors import LohpError
from lohp.tasks import DigitsFamily, Task, TaskBatch, make_family


@pytest.fixture(scope="module")
def raw_digits():
    """Independent reference: image bytes -> original digit (all 1797 images are distinct)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    lookup = {row.tobytes(): int(t) for row, t in zip(x, d.target)}
    assert len(lookup) == len(x)
    return lookup


def row_keys(x: torch.Tensor) -> list[bytes]:
    return [r.tobytes() for r in x.numpy().astype(np.float32)]


def test_family_is_deterministic(digits):
    again = DigitsFamily(n_way=5)
    for split in ("source", "heldout"):
        for seed in (0, 3, 11):
            a, b, c = digits.sample(seed, split), digits.sample(seed, split), again.sample(seed, split)
            for t in (b, c):
                for f in ("x_train", "y_train", "x_eval", "y_eval"):
                    assert torch.equal(getattr(a, f), getattr(t, f)), (split, seed, f)
                assert a.info == t.info and a.name == t.name
    # different seeds give different tasks (class set or label order)
    infos = {tuple(digits.sample(s).info["classes"]) for s in range(12)}
    assert len(infos) > 6


def test_source_and_heldout_streams_differ(digits):
    src = [tuple(digits.sample(s, "source").info["classes"]) for s in range(10)]
    held = [tuple(digits.sample(s, "heldout").info["classes"]) for s in range(10)]
    assert src != held


def test_eval_split_never_overlaps_any_train_split(digits, raw_digits):
    train_rows, eval_rows = set(), set()
    for split in ("source", "heldout"):
        for seed in range(8):
            t = digits.sample(seed, split)
            tr, ev = set(row_keys(t.x_train)), set(row_keys(t.x_eval))
            assert tr.isdisjoint(ev), (split, seed)
            assert len(tr) == len(t.x_train) and len(ev) == len(t.x_eval)  # no repeated image
            train_rows |= tr
            eval_rows |= ev
    # across tasks too: an image used for training anywhere is never evaluated on anywhere
    assert train_rows.isdisjoint(eval_rows)
    assert len(train_rows) > 0.5 * len(raw_digits) and len(eval_rows) > 0.3 * len(raw_digits)


def test_each_task_uses_every_image_of_its_classes(digits, raw_digits):
    counts = {c: sum(1 for v in raw_digits.values() if v == c) for c in range(10)}
    t = digits.sample(4)
    digits_in_task = [raw_digits[k] for k in row_keys(torch.cat([t.x_train, t.x_eval]))]
    assert sorted(set(digits_in_task)) == sorted(t.info["classes"])
    assert len(digits_in_task) == sum(counts[c] for c in t.info["classes"])
    # the training fraction is about 0.6 of each class
    for c in t.info["classes"]:
        n_train = sum(1 for k in row_keys(t.x_train) if raw_digits[k] == c)
        assert abs(n_train - 0.6 * counts[c]) <= 1


@pytest.mark.parametrize("n_way", [2, 5, 8])
def test_heldout_combinations_never_seen_as_source(n_way, raw_digits):
    fam = DigitsFamily(n_way=n_way)
    src, held = set(map(tuple, fam.source_combos)), set(map(tuple, fam.heldout_combos))
    assert src and held and src.isdisjoint(held)
    assert src | held == set(itertools.combinations(range(10), n_way))
    assert len(held) == max(1, round(0.3 * math.comb(10, n_way)))
    # and the sampled tasks respect it, judged from the images they actually contain
    for seed in range(6):
        for split, allowed in (("source", src), ("heldout", held)):
            t = fam.sample(seed, split)
            combo = tuple(sorted({raw_digits[k] for k in row_keys(t.x_train)}))
            assert len(combo) == n_way and combo in allowed, (split, seed, combo)
            assert tuple(t.info["combo"]) == combo


def test_label_order_is_a_permutation_of_the_classes(digits, raw_digits):
    orders = []
    for seed in range(8):
        t = digits.sample(seed)
        classes = t.info["classes"]
        assert sorted(classes) == t.info["combo"] and len(set(classes)) == 5
        for x, y in ((t.x_train, t.y_train), (t.x_eval, t.y_eval)):
            assert sorted(y.unique().tolist()) == list(range(5))
            for k, label in zip(row_keys(x), y.tolist()):
                assert raw_digits[k] == classes[label]
        orders.append(classes != sorted(classes))
    assert any(orders), "label order is never shuffled"


def test_condition_uses_the_training_split_only(digits):
    t = digits.sample(2)
    c = t.condition()
    assert c.shape == (5, 64)
    # independent reference: per-label mean of the training images, in label order
    want = torch.stack([t.x_train[t.y_train == k].mean(0) for k in range(5)])
    torch.testing.assert_close(c, want, rtol=1e-6, atol=1e-6)
    # changing the evaluation split leaves it unchanged
    g = torch.Generator().manual_seed(0)
    other_eval = dataclasses.replace(t, x_eval=torch.rand(t.x_eval.shape, generator=g),
                                     y_eval=torch.randint(0, 5, t.y_eval.shape, generator=g))
    assert torch.equal(other_eval.condition(), c)
    no_eval = dataclasses.replace(t, x_eval=t.x_eval[:1], y_eval=t.y_eval[:1])
    assert torch.equal(no_eval.condition(), c)
    # changing the training split does change it
    other_train = dataclasses.replace(t, x_train=t.x_train.flip(0))
    assert not torch.equal(other_train.condition(), c)


def test_init_theta_schemes(digits):
    t = digits.sample(0)
    d = t.layout.size
    assert d == 64 * 5 + 5
    state = torch.random.get_rng_state()
    a = t.init_theta(7)
    assert torch.equal(torch.random.get_rng_state(), state), "init_theta changed the global RNG"
    torch.manual_seed(7)
    ref = nn.Linear(64, 5)
    assert torch.equal(a, torch.cat([ref.weight.detach().reshape(-1), ref.bias.detach()]))
    assert not torch.equal(a, t.init_theta(8))
    n = t.init_theta(7, "normal", sigma=0.5)
    assert n.shape == (d,) and torch.equal(n, t.init_theta(7, "normal", sigma=0.5))
    assert 0.4 < n.std().item() < 0.6
    assert torch.equal(t.init_theta(1, "zeros"), torch.zeros(d))
    with pytest.raises(LohpError, match="init"):
        t.init_theta(0, "xavier")


def test_evaluate_matches_module_forward(digits):
    t = digits.sample(1)
    theta = t.init_theta(3)
    m = t.model()
    t.layout.load_into(m, theta)
    with torch.no_grad():
        for split, x, y in (("eval", t.x_eval, t.y_eval), ("train", t.x_train, t.y_train)):
            logits = m(x)
            got = t.evaluate(theta, split)
            assert got["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
            assert got["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item(), abs=1e-6)


def test_mlp_head_and_patterns():
    fam = DigitsFamily(n_way=3, head="mlp", hidden=8, patterns=("2.*",))
    t = fam.sample(0)
    assert t.layout.names == ("2.weight", "2.bias") and t.layout.size == 8 * 3 + 3


def _toy_task(n: int, offset: float) -> Task:
    x = (torch.arange(n, dtype=torch.float32) + offset)[:, None]  # row i holds offset + i
    y = torch.arange(n) % 2
    return Task("toy", 0, "source", x, y, x[: max(1, n // 2)], y[: max(1, n // 2)], 2,
                lambda: nn.Linear(1, 2), ("*",))


def test_task_batch_minibatch_stays_within_true_sizes():
    sizes = [3, 50, 7, 1]
    tasks = [_toy_task(n, 1.0) for n in sizes]  # padding rows hold 0, real rows >= 1
    batch = TaskBatch.stack(tasks)
    assert batch.x_train.shape == (4, 50, 1) and batch.n_train.tolist() == sizes
    assert batch.n_eval.tolist() == [1, 25, 3, 1]
    g = torch.Generator().manual_seed(0)
    seen = [set() for _ in sizes]
    for _ in range(200):
        xb, yb = batch.minibatch(32, g)
        assert xb.shape == (4, 32, 1) and yb.shape == (4, 32)
        for r, n in enumerate(sizes):
            rows = xb[r, :, 0]
            assert (rows >= 1).all() and (rows <= n).all(), f"task {r} drew a padding row"
            # labels travel with their rows
            assert torch.equal(yb[r], (rows.long() - 1) % 2)
            seen[r] |= set(rows.long().tolist())
    assert [len(s) for s in seen] == sizes  # and every real row is reachable


def test_task_batch_mask():
    batch = TaskBatch.stack([_toy_task(n, 1.0) for n in (2, 4)])
    assert batch.mask("train").tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch.mask("eval").tolist() == [[1, 0], [1, 1]]


def test_family_errors():
    with pytest.raises(LohpError, match="unknown task family"):
        make_family("cifar")
    with pytest.raises(LohpError):
        make_family("digits", n_way=10)
    with pytest.raises(LohpError):
        make_family("digits", head="resnet")
    with pytest.raises(LohpError):
        make_family("digits", colour=True)
    with pytest.raises(LohpError, match="split"):
        DigitsFamily().sample(0, "test")


def test_config_rebuilds_the_family(digits):
    again = make_family("digits", **digits.config())
    assert again.source_combos == digits.source_combos
    assert torch.equal(again.sample(5).x_train, digits.sample(5).x_train)
