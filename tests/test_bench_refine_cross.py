"""lohp bench refine / cross on tiny digits settings: schema, and each number against an
independent route (the task's own evaluate, a reloaded policy)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lohp.errors import LohpError


def test_bench_refine_rows_and_their_starts(tmp_path, monkeypatch):
    from lohp.bench import refine as br
    from lohp.bench.scenario import s0_sampler
    from lohp.generation import Generator
    from lohp.trajectories import TrajectoryStore

    monkeypatch.setitem(br.SCENARIOS, "tiny", br.RefineScenario(
        "digits", {"n_way": 3}, store_tasks=4, steps=4, batch_size=16, train_batch=3, optimizers=("adam",),
        policy_options={"channels": 8, "token_size": 8, "depth": 1}, train_options={"eval_tasks": 1},
        lrs=(0.01, 0.1), eval_tasks=3, tune_tasks=2))
    cfg = br.RefineBenchConfig(work=str(tmp_path / "w"), scenarios=["tiny"], budget=1.0, step_counts=(0, 1, 2, 4, 6))
    res = br.run(cfg)
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["scratch", "hypernetwork", "lo-di", "lo-hp"]
    for r in rows.values():
        assert r["scenario"] == "tiny" and set(r["accuracy_by_steps"]) == {"0", "1", "2", "4", "6"}
        assert r["lr"] in (0.01, 0.1) and len(r["curve"]) == 7
    # the target is 0.99 x scratch at T = 4, which scratch itself reaches by step T
    assert rows["scratch"]["target_accuracy"] == pytest.approx(0.99 * rows["scratch"]["curve"][4])
    assert rows["scratch"]["steps_to_target"] is not None and rows["scratch"]["steps_to_target"] <= 4
    # step 0 of each start is the start itself: scratch = s_0, lo-hp = the reloaded policy's weights
    store = TrajectoryStore.open(tmp_path / "w" / "tiny" / "store")
    tasks = store.family().heldout_tasks(3)
    s0 = s0_sampler(tasks, store)(0)
    assert rows["scratch"]["accuracy_by_steps"]["0"] == pytest.approx(
        np.mean([t.evaluate(s)["accuracy"] for t, s in zip(tasks, s0)]))
    [folder] = (tmp_path / "w" / "tiny" / "policies").glob("lo-hp-k2*-s0")
    gen = Generator.load(folder)
    gen_acc = np.mean([t.evaluate(th)["accuracy"] for t, th in zip(tasks, gen.generate_batch(tasks, s0=s0))])
    assert rows["lo-hp"]["accuracy_by_steps"]["0"] == pytest.approx(gen_acc)
    paths = br.plots(res, tmp_path / "plots")
    assert [p.name for p in paths] == ["refine_tiny.png"] and paths[0].stat().st_size > 0
    json.dumps(res)
    with pytest.raises(LohpError, match="unknown refine scenario nope; choose from digits"):
        br.RefineBenchConfig(scenarios=["nope"])


def test_bench_cross_generates_for_an_unseen_width(tmp_path, monkeypatch):
    from lohp.bench import cross as bc

    tiny = bc.CrossStudy("digits", {"n_way": 3, "head": "mlp"}, "hidden", 4, [8], store_tasks=4, steps=4,
                         batch_size=16, train_batch=3, eval_tasks=3,
                         policy_options={"channels": 8, "token_size": 8, "depth": 1}, train_options={"eval_tasks": 1})
    monkeypatch.setattr(bc, "_studies", lambda: {"tiny": tiny})
    res = bc.run(bc.CrossBenchConfig(work=str(tmp_path / "w"), studies=["tiny"], budget=1.0))
    served = [r for r in res["rows"] if r["served"]]
    assert [r["architecture"] for r in served] == ["hidden=4", "hidden=8"]
    own, wide = served
    assert own["accuracy"] == own["in_distribution_accuracy"]      # the same policy on its own width
    assert wide["d"] > own["d"] and 0 <= wide["accuracy"] <= 1 and wide["adam_accuracy"] > 1 / 3
    assert any(not r["served"] and "rank" in r["reason"] for r in res["rows"])
    assert bc.plots(res, tmp_path)[0].exists()
