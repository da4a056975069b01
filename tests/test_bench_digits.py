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
        variants=[bd.Variant("hypernetwork", "hypernetwork", k=0), bd.Variant("lo-di", "lo-di"),
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
