"""The digits benchmark end to end on a tiny configuration: schema, rows, plots, resume."""

import json

import pytest

from lohp.bench import digits as bd


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench") / "work"
    cfg = bd.DigitsBenchConfig(
        work=str(work), store_tasks=6, steps=8, iterations=3, budget=None, train_batch=4, seeds=2, eval_tasks=3,
        speedup_tasks=2, latency_repeats=3, l2o_methods=["l2o"], l2o_seeds={"l2o": 1}, l2o_iterations=2,
        variants=[bd.Variant("hypernetwork", "hypernetwork", k=None), bd.Variant("lo-di", "lo-di"),
                  bd.Variant("lo-op", "lo-op"), bd.Variant("lo-hp", "lo-hp"), bd.Variant("lo-hp", "lo-hp", k=4),
                  bd.Variant("lo-hp[adam]", "lo-hp", optimizers=["adam"], ablation=True)])
    return cfg, bd.run(cfg)


def test_rows_follow_the_shared_schema(tiny):
    cfg, result = tiny
    rows = result["rows"]
    names = [(r["method"], r["k"]) for r in rows]
    assert names == [("adam", None), ("sgd", None), ("sam", None), ("adam-n", None), ("l2o", None),
                     ("hypernetwork", None), ("lo-di", 2), ("lo-op", 2), ("lo-hp", 2), ("lo-hp", 4),
                     ("lo-hp[adam]", 2)]
    for r in rows:
        for key in ("method", "k", "accuracy", "accuracy_std", "accuracy_wide", "latency_ms"):
            assert key in r, (r["method"], key)
        assert 0 <= r["accuracy"] <= 1 and r["latency_ms"] > 0
    lohp = [r for r in rows if r["method"] == "lo-hp"]
    assert all("time_to_accuracy_speedup" in r for r in lohp)
    assert len(lohp[0]["seeds"]) == 2 and len(rows[-1]["seeds"]) == 1  # ablations use ablation_seeds
    assert [r["steps"] for r in rows if r["method"] in ("lo-hp", "hypernetwork")] == [1, 4, 2]
    json.dumps(result)  # JSON-able as written by --json


def test_plots_and_rerun_resumes_without_retraining(tiny, tmp_path):
    cfg, result = tiny
    paths = bd.plots(result, tmp_path)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    again = bd.run(cfg)  # every store shard and policy is reused: same accuracies
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in result["rows"]]


def test_a_diverging_method_is_a_row_not_the_end_of_the_benchmark(small_store_path, tmp_path, monkeypatch):
    """A loss that turns non-finite after the first checkpoint: the row evaluates that
    checkpoint and lists the seed; one that is non-finite from the start gives a NaN row."""
    import math

    from lohp.bench.scenario import Variant, learned_row, s0_sampler
    from lohp.losses import LocalRegression
    from lohp.trajectories import TrajectoryStore

    store = TrajectoryStore.open(small_store_path)
    tasks = store.family().heldout_tasks(2)
    real, calls = LocalRegression.__call__, {"n": 0}

    def after_two(self, policy, batch):
        calls["n"] += 1
        loss, diag = real(self, policy, batch)
        return (loss * math.nan if calls["n"] > 2 else loss), diag

    monkeypatch.setattr(LocalRegression, "__call__", after_two)
    v = Variant("lo-di", "lo-di", policy_options={"channels": 8, "token_size": 8, "depth": 1},
                train_options={"checkpoint_every": 1, "eval_tasks": 1})
    row, _ = learned_row(tmp_path, store, v, tasks, s0_sampler(tasks, store), 1, 5, 2, lambda s: None,
                         latency_repeats=2)
    assert row["diverged_seeds"] == [0] and 0 <= row["accuracy"] <= 1 and row["iterations"] == 2
    calls["n"] = 10
    v2 = Variant("lo-di2", "lo-di", policy_options={"channels": 8, "token_size": 8, "depth": 1, "sigma_f": 0.3},
                 train_options={"eval_tasks": 1})
    row2, _ = learned_row(tmp_path, store, v2, tasks, s0_sampler(tasks, store), 1, 5, 2, lambda s: None)
    assert row2["diverged_seeds"] == [0] and math.isnan(row2["accuracy"])
