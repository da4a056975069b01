"""``lohp bench lora`` end to end on a tiny configuration: the rows, the JSON schema, the plot,
and the one-line errors of the command."""

import json

import pytest

from lohp.bench import lora as bl

TINY_FAMILY = {"shots": 4, "eval_shots": 4, "max_length": 16, "pool": 8}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench-lora") / "work"
    cfg = bl.LoraBenchConfig(work=str(work), family_config=dict(TINY_FAMILY), store_tasks=2, steps=2, record_every=2,
                             iterations=2, policy_seconds=None, train_batch=2, eval_tasks=2, speedup_tasks=1,
                             latency_repeats=2)
    return cfg, bl.run(cfg)


def test_rows_follow_the_shared_schema(tiny):
    cfg, result = tiny
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["adam", "sgd", "linear-probe", "hypernetwork", "lo-di", "lo-di-noise",
                                          "lo-op", "lo-hp-v1", "lo-hp"]
    for r in rows:
        for key in ("method", "k", "accuracy", "accuracy_std", "accuracy_wide", "latency_ms"):
            assert key in r, (r["method"], key)
        assert 0 <= r["accuracy"] <= 1 and r["latency_ms"] > 0
    lohp = rows[-1]
    assert lohp["k"] == 2 and lohp["steps"] == 1 and lohp["time_to_accuracy_speedup"] > 0
    assert lohp["latency_with_condition_ms"] > lohp["latency_ms"] and lohp["iterations"] == [2]
    assert lohp["time_to_accuracy_speedup"] <= lohp["time_to_accuracy_speedup_without_condition"]
    assert result["parameters"] == 73_728 + 384 * 5
    assert set(result["targets"]) >= {"latency_ms<=50", "speedup>=30 (condition included)"}
    json.dumps(result)


def test_plot(tiny, tmp_path):
    _, result = tiny
    assert all(p.exists() and p.stat().st_size > 0 for p in bl.plots(result, tmp_path))


def test_cli_errors_are_one_line(cli, tmp_path):
    code, _, err = cli("bench", "lora", "--family", "nope", "--work", tmp_path / "w")
    assert code == 2 and "unknown task family" in err
    code, _, err = cli("bench", "lora", "--family-option", "rank=0", "--work", tmp_path / "w")
    assert code == 2 and "LoRA rank must be > 0" in err
    code, _, err = cli("bench", "lora", "--iterations", "0", "--work", tmp_path / "w")
    assert code == 2 and "--iterations must be > 0" in err
