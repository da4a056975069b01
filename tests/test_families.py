"""Families by registration, entry points, and the conformance helper every built-in family passes."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from lohp.errors import LohpError
from lohp.tasks import make_family, register_family
from lohp.tasks.digits import DigitsFamily
from lohp.testing import check_family


@pytest.mark.parametrize("config", [{}, {"n_way": 3}, {"head": "mlp", "hidden": 8}])
def test_digits_family_passes_the_conformance_check(config):
    check_family(make_family("digits", **config), name="digits")


def test_image_families_pass_the_conformance_check(fake_features, fake_domains):
    for name, config in (("openclipart", {"n_way": 3}), ("openclipart", {"n_way": 3, "shots": 2, "queries": 3}),
                         ("rotated-mnist", {"heldout_domain": 0, "n_way": 3, "hidden": 4})):
        check_family(make_family(name, **config), name=name)


class _OneClass(DigitsFamily):
    def sample(self, seed, split="source"):
        task = super().sample(seed, split)
        keep = task.y_train == 0
        from dataclasses import replace

        return replace(task, x_train=task.x_train[keep], y_train=task.y_train[keep])


class _Leaky(DigitsFamily):
    def sample(self, seed, split="source"):
        task = super().sample(seed, split)
        from dataclasses import replace

        return replace(task, condition_fn=lambda t: t.x_eval[:5].reshape(5, -1)[:t.n_classes])


class _Random(DigitsFamily):
    def sample(self, seed, split="source"):
        task = super().sample(seed, split)
        from dataclasses import replace

        return replace(task, x_train=task.x_train + torch.rand(()))


@pytest.mark.parametrize("bad,match", [(_OneClass, "not every class"), (_Leaky, "evaluation split"),
                                       (_Random, "deterministic")])
def test_the_conformance_check_catches_broken_families(bad, match):
    with pytest.raises(AssertionError, match=match):
        check_family(bad(n_way=3))


def test_register_family_serves_make_family_and_refuses_a_silent_replacement():
    class Mine(DigitsFamily):
        name = "mine"

    register_family("mine-test", Mine)
    assert isinstance(make_family("mine-test", n_way=3), Mine)
    with pytest.raises(LohpError, match="already registered"):
        register_family("mine-test", DigitsFamily)
    register_family("mine-test", DigitsFamily, overwrite=True)
    with pytest.raises(LohpError, match="register_family.*entry-points"):
        make_family("no-such-family")


def test_an_entry_point_family_works_in_every_command_of_a_fresh_process(tmp_path):
    """A package declaring [project.entry-points."lohp.families"] is found by `lohp prepare`,
    `lohp train` and `lohp generate`, each in its own process, with no registration code."""
    site = tmp_path / "site"
    (site / "myfam-0.1.dist-info").mkdir(parents=True)
    (site / "myfam.py").write_text(textwrap.dedent("""
        from lohp.tasks.digits import DigitsFamily

        class MyFamily(DigitsFamily):
            name = "myfam"
    """))
    (site / "myfam-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: myfam\nVersion: 0.1\n")
    (site / "myfam-0.1.dist-info" / "entry_points.txt").write_text("[lohp.families]\nmyfam = myfam:MyFamily\n")
    env = {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}

    def lohp(*args):
        return subprocess.run([sys.executable, "-m", "lohp", *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)

    r = lohp("prepare", "--family", "myfam", "--family-option", "n_way=3", "--optimizers", "adam", "--tasks", "2",
             "--seeds", "1", "--steps", "4", "--out", "store")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["config"]["family"] == "myfam"
    r = lohp("train", "--store", "store", "--out", "pol", "--iterations", "3", "--channels", "8", "--token-size", "8",
             "--depth", "1")
    assert r.returncode == 0, r.stderr
    r = lohp("generate", "--policy", "pol", "--task-seed", "1", "--out", "w.safetensors")
    assert r.returncode == 0 and (tmp_path / "w.safetensors").exists(), r.stderr
    r = lohp("evaluate", "--policy", "pol", "--tasks", "3", "--baselines", "adam,prototype", "--no-tune",
             "--json", "ev.json")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "ev.json").read_text())["rows"]
    assert [x["method"] for x in rows] == ["adam", "prototype", "lo-hp"] and all(0 <= x["accuracy"] <= 1 for x in rows)
    r = lohp("generate", "--policy", "pol", "--family", "nofam", "--task-seed", "1", "--out", "w2.safetensors")
    assert r.returncode == 2 and "register_family" in r.stderr and "\n" not in r.stderr.strip()


def test_api_evaluate_compares_the_policy_with_tuned_adam_on_held_out_tasks(tmp_path):
    """The policy row carries the method it was trained with; Adam's lr comes from the source
    tasks' grid; every baseline runs on the same held-out tasks."""
    from lohp import api
    from lohp.bench.scenario import ADAM_LRS
    from lohp.io import sha256_file

    store = tmp_path / "store"
    api.prepare(store, family_config={"n_way": 3}, optimizers=("adam",), tasks=3, steps=4, seed=0)
    api.train(store, tmp_path / "p", "lo-di", policy_options={"channels": 8, "token_size": 8, "depth": 1},
              train_options={"iterations": 5, "batch_size": 3, "eval_tasks": 1})
    res = api.evaluate(tmp_path / "p", tasks=4, baselines=("adam", "adam-n", "prototype-l2"), latency_repeats=2)
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["adam", "adam-n", "prototype-l2", "lo-di"] and res["heldout_tasks"] == 4
    assert rows["adam"]["lr"] in ADAM_LRS and rows["adam-n"]["steps"] == 2 and rows["lo-di"]["steps"] == 2
    # which state of the policy it measured (a result saved in the policy folder joins its model card)
    assert res["policy_iteration"] == 5 and res["policy_sha256"] == sha256_file(tmp_path / "p" / "policy.safetensors")
    with pytest.raises(LohpError, match="unknown baseline"):
        api.evaluate(tmp_path / "p", baselines=("adamw",))
