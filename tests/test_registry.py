"""Extension by registration: a new Stage II method is one loss class plus one call."""

from __future__ import annotations

import csv

import pytest
import torch

from lohp.errors import LohpError


class MeanStepLoss:
    """A toy method: regress the policy's mean step at real states onto the real step."""

    diagnostics = ("my_term",)

    def __init__(self, config):
        self.config = config

    def __call__(self, policy, batch):
        th = batch.offline
        b, n1, d = th.shape
        j = torch.arange(n1 - 1).repeat(b)
        mu = policy(th[:, :-1].reshape(-1, d), j, batch.cond.repeat_interleave(n1 - 1, 0))
        loss = ((mu - (th[:, 1:] - th[:, :-1]).reshape(-1, d)) ** 2).mean() / policy.step_scale.mean() ** 2
        return loss, {"my_term": loss.item()}


def test_a_registered_method_trains_logs_its_diagnostics_and_reopens(small_store_path, tmp_path):
    from lohp import api
    from lohp.losses import Method, method_names, register_method

    register_method(Method("test-mean-step", MeanStepLoss, {"beta": 1.0}, regression=True), overwrite=True)
    assert "test-mean-step" in method_names()
    api.train(small_store_path, tmp_path / "p", "test-mean-step", policy_options={"channels": 8, "token_size": 8,
                                                                                  "depth": 1},
              train_options={"iterations": 4, "batch_size": 2, "log_every": 2, "eval_tasks": 1})
    with open(tmp_path / "p" / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert "my_term" in rows[0] and "loss_on" not in rows[0] and float(rows[-1]["my_term"]) > 0
    gen = api.load_policy(tmp_path / "p")
    assert gen.meta["method"] == "test-mean-step"


def test_an_undeclared_diagnostic_is_named(small_store_path, tmp_path):
    from lohp import api
    from lohp.losses import Method, register_method

    class Sloppy(MeanStepLoss):
        diagnostics = ()

    register_method(Method("test-sloppy", Sloppy), overwrite=True)
    with pytest.raises(LohpError, match="returned diagnostics my_term that its class does not declare"):
        api.train(small_store_path, tmp_path / "p", "test-sloppy", policy_options={"channels": 8, "token_size": 8,
                                                                                   "depth": 1},
                  train_options={"iterations": 2, "batch_size": 2, "log_every": 1, "eval_tasks": 1})


def test_a_second_method_of_the_same_name_is_refused():
    from lohp.losses import Method, register_method

    with pytest.raises(LohpError, match="already registered"):
        register_method(Method("lo-hp", MeanStepLoss))


def test_the_structure_is_chosen_by_kind_when_asked(small_store_path, tmp_path):
    """policy option `structure`: the named kind is used (and recorded); one that does not fit
    the layout, or an unknown one, is refused in one line before any training."""
    from lohp.policy.structure import _registry, make_structure, register_structure
    from lohp.training import train
    from lohp.trajectories import TrajectoryStore

    layout = TrajectoryStore.open(small_store_path).layout
    assert make_structure(layout).kind == "class-rows"
    with pytest.raises(LohpError, match="the mlp-units policy|one-hidden-layer"):
        make_structure(layout, kind="mlp-units")
    with pytest.raises(LohpError, match="unknown policy structure 'nope'; choose one of class-rows"):
        make_structure(layout, kind="nope")

    base = type(make_structure(layout))

    class Wide(base):  # a registered kind that serves the same layout
        kind = "test-wide-rows"

    saved = dict(_registry())
    register_structure(Wide)
    try:
        res = train(small_store_path, tmp_path / "p", "lo-di", 2, {}, {"channels": 8, "depth": 1,
                                                                       "structure": "test-wide-rows"},
                    {"iterations": 1, "eval_every": 10, "checkpoint_every": 1, "log_every": 1, "eval_tasks": 1,
                     "diagnostic_trajectories": 2})
        assert res["iteration"] == 1
        import json
        assert json.loads((tmp_path / "p" / "policy.json").read_text())["structure"]["kind"] == "test-wide-rows"
    finally:
        _registry().clear()
        _registry().update(saved)


def test_a_second_structure_of_a_registered_kind_is_refused():
    """Saved policies reopen through their kind, so another class may not take it over."""
    from lohp.policy.structure import ClassRowStructure, _registry, register_structure

    class Impostor(ClassRowStructure):
        kind = "class-rows"

    with pytest.raises(LohpError, match="kind 'class-rows' is already registered"):
        register_structure(Impostor)
    assert _registry()["class-rows"] is ClassRowStructure
    assert register_structure(ClassRowStructure) is ClassRowStructure  # the same class again: a no-op
