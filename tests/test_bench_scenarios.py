"""The image scenario benchmarks end to end on made-up data and tiny budgets: rows and schema."""

import json

import pytest

from lohp.bench import domain as bdom
from lohp.bench import fewshot as bfs
from lohp.bench import transfer as btr
from lohp.bench.scenario import Variant, ci95

TINY = {"iterations": 2, "log_every": 1, "eval_every": 2, "checkpoint_every": 1, "eval_tasks": 2,
        "diagnostic_trajectories": 2}


def _variants(names, **policy):
    return [Variant(n, n, k=None if n == "hypernetwork" else 2, train_options=dict(TINY), policy_options=policy)
            for n in names]


def _schema(rows):
    for r in rows:
        for key in ("method", "k", "accuracy", "accuracy_std", "latency_ms", "seeds"):
            assert key in r, (r["method"], key)
        assert 0 <= r["accuracy"] <= 1
        assert "per_task" not in r


def test_transfer_rows_cover_every_method_and_the_cross_dataset(fake_features, tmp_path):
    cfg = btr.TransferBenchConfig(work=str(tmp_path), n_way=3, store_tasks=3, steps=4, batch_size=8, train_batch=2,
                                  seeds=1, eval_tasks=2, cross_tasks=2, speedup_tasks=1, latency_repeats=2,
                                  variants=_variants(["hypernetwork", "lo-di", "lo-hp"], token_size=4))
    result = btr.run(cfg)
    rows = result["rows"]
    _schema(rows)
    clip = [r["method"] for r in rows if r["dataset"] == "openclipart"]
    skeptic = ["prototype", "prototype-l2", "lda", "linear-probe", "adam-cond"]
    assert clip == ["adam", "sgd", "adam-n", *skeptic, "hypernetwork", "lo-di", "lo-hp"]
    assert [r["method"] for r in rows if r["dataset"] == "fashion"] == ["adam", *skeptic, "hypernetwork", "lo-di",
                                                                        "lo-hp"]
    learned = [r for r in rows if r["dataset"] == "openclipart" and r["method"] in ("hypernetwork", "lo-di", "lo-hp")]
    assert all(r["iterations_per_second"] > 0 and r["curves"] and r["curves"][0] for r in learned)
    lohp = next(r for r in rows if r["method"] == "lo-hp")
    assert lohp["speedup_condition_included"] and lohp["time_to_accuracy_speedup_without_condition"] > 0
    assert result["adam_tuning"]["linear-probe"]["C"] in (0.01, 0.1, 1.0, 10.0)
    json.dumps(result)
    assert btr.plots(result, tmp_path / "plots")[0].stat().st_size > 0


def test_prototype_and_probe_are_near_perfect_on_separated_classes(fake_features, tmp_path):
    from lohp.bench.baselines import probe_accuracy, prototype_accuracy
    from lohp.tasks import make_family

    task = make_family("openclipart", n_way=3).sample(0, "heldout")  # class centres 1 apart, unit noise in 16-d
    assert prototype_accuracy(task)[0] > 0.9 and probe_accuracy(task)[0] > 0.8


def test_few_shot_rows_carry_shots_and_a_confidence_interval(fake_features, tmp_path):
    cfg = bfs.FewShotBenchConfig(work=str(tmp_path), n_way=3, shots=[1, 2], queries=5, store_tasks=3, steps=4,
                                 batch_size=4, train_batch=2, seeds=1, episodes=6, speedup_tasks=1,
                                 latency_repeats=2, variants=_variants(["hypernetwork", "lo-hp"], token_size=4))
    rows = bfs.run(cfg)["rows"]
    _schema(rows)
    assert [(r["method"], r["shots"]) for r in rows] == [(m, s) for s in (1, 2)
                                                         for m in ("adam", "adam-n", "prototype", "prototype-l2", "lda",
                                                                   "linear-probe", "adam-cond", "hypernetwork",
                                                                   "lo-hp")]
    assert all(r["episodes"] == 6 and r["ci95"] >= 0 for r in rows)


def test_ci95_is_the_normal_interval():
    # by hand: [0, 1] has sample std sqrt(1/2), standard error sqrt(1/2) / sqrt(2) = 1/2, x 1.96
    assert ci95([0.0, 1.0]) == pytest.approx(0.98)
    # [0, 2, 4, 6]: squared deviations 9+1+1+9 = 20, / 3 -> std 2.5820, / 2 -> 1.2910, x 1.96
    assert ci95([0.0, 2.0, 4.0, 6.0]) == pytest.approx(2.5303, abs=1e-4)
    assert ci95([0.7, 0.7, 0.7]) == pytest.approx(0, abs=1e-12)


def test_domain_rows_per_held_out_domain_and_their_mean(fake_domains, tmp_path):
    cfg = bdom.DomainBenchConfig(work=str(tmp_path), datasets=["mnist"], domains=[0, 30], n_way=3, hidden=4,
                                 store_tasks=3, steps=4, batch_size=8, train_batch=2, seeds=1, eval_tasks=2,
                                 speedup_tasks=1, latency_repeats=2,
                                 variants=_variants(["lo-di", "lo-hp"], token_size=32, condition_skip=True))
    rows = bdom.run(cfg)["rows"]
    _schema(rows)
    methods = ("adam", "sgd", "adam-n", "prototype", "prototype-l2", "lda", "linear-probe", "adam-cond", "lo-di",
               "lo-hp")
    assert [(r["method"], r["domain"]) for r in rows] == (
        [(m, d) for d in ("0", "30") for m in methods] + [(m, "mean") for m in methods])
    for m in ("adam", "lo-hp"):
        per = [r["accuracy"] for r in rows if r["method"] == m and r["domain"] != "mean"]
        mean = next(r for r in rows if r["method"] == m and r["domain"] == "mean")
        assert mean["accuracy"] == pytest.approx(sum(per) / 2)


def test_unknown_domains_and_datasets_are_refused():
    from lohp.errors import LohpError

    with pytest.raises(LohpError, match="unknown domain 10"):
        bdom.DomainBenchConfig(domains=[10])
    with pytest.raises(LohpError, match="unknown dataset"):
        bdom.DomainBenchConfig(datasets=["svhn"])
