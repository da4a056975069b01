"""The benchmark registry and the one command path every ``lohp bench NAME`` takes:
configs are strict lohp.config.Config dataclasses with help texts, the command's options
come from them, given options are validated by ``replace`` (``__post_init__``), and the
tables come from each benchmark's ``tables`` hook."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lohp.bench import digits, fewshot, lora, runner
from lohp.bench import l2o as bl2o
from lohp.cli import bench as cli_bench  # noqa: F401  (imports register every benchmark)
from lohp.config import Config
from lohp.errors import LohpError

NAMES = ("digits", "transfer", "few-shot", "domain", "refine", "cross", "lora", "l2o")


def test_every_benchmark_is_registered_with_a_strict_documented_config():
    assert set(NAMES) <= set(runner.BENCHMARKS)
    for name in NAMES:
        bench = runner.benchmark(name)
        assert issubclass(bench.config_cls, Config), name
        for f in dataclasses.fields(bench.config_cls):
            assert f.metadata.get("help"), (name, f.name)
        default, quick = bench.config(False), bench.config(True)
        assert type(default) is type(quick) is bench.config_cls and default != quick, name
        with pytest.raises(LohpError, match="unknown bench"):
            default.replace(no_such_setting=1)
        json.dumps(default.to_dict(), default=str)
    with pytest.raises(LohpError, match="unknown benchmark 'nope'"):
        runner.benchmark("nope")


@pytest.mark.parametrize("name, given, match", [
    ("transfer", {"seeds": 0}, "--seeds must be > 0"),
    ("few-shot", {"episodes": -1}, "--episodes must be > 0"),
    ("domain", {"domains": [10]}, "unknown domain 10"),
    ("digits", {"budget": 0.0}, "--budget must be > 0 seconds"),
    ("digits", {"iterations": 5, "budget": 3.0}, "either --iterations or --budget"),
    ("lora", {"iterations": 0}, "--iterations must be > 0"),
    ("refine", {"scenarios": ["nope"]}, "unknown refine scenario"),
    ("cross", {"studies": ["nope"]}, "unknown cross study"),
    ("l2o", {"horizon": 10, "truncation": 4}, "does not divide"),
])
def test_given_settings_are_validated_by_the_config(name, given, match):
    with pytest.raises(LohpError, match=match):
        runner.benchmark(name).config(False, given)


def test_command_line_hooks_keep_the_old_meanings():
    digits = runner.benchmark("digits")
    assert digits.config(False, {"iterations": 7}).budget is None          # --iterations: no time budget
    assert digits.config(True, {"budget": 5.0}).budget == 5.0
    l2o = runner.benchmark("l2o")
    assert l2o.config(True, {"horizon": 96}).long_horizon == 384          # past the preset's: 4 x horizon
    assert l2o.config(True, {"horizon": 16}).long_horizon == bl2o.QUICK["long_horizon"]
    assert l2o.config(True).quick and not l2o.config(False).quick
    assert runner.benchmark("cross").config(True).budget == 10.0 and runner.benchmark("refine").config(True).quick
    transfer = runner.benchmark("transfer")
    [v] = [v for v in transfer.config(False, transfer.budget(7.0)).variants if v.name == "lo-hp"]
    assert v.train_options["time_limit"] == 7.0


def test_every_accuracy_column_names_the_sample_std():
    for c in (runner.SCENARIO_COLUMNS, digits.COLUMNS, fewshot.COLUMNS, lora.COLUMNS):
        assert ("accuracy", "accuracy (mean ± sample std)", ".4f") in c


@pytest.mark.parametrize("name, options", [
    ("digits", ["--store-tasks", "--l2o-methods", "--iterations", "--budget", "--seeds", "--work", "--device"]),
    ("transfer", ["--cross-tasks", "--budget", "--family-option", "--seeds", "--work", "--device"]),
    ("few-shot", ["--episodes", "--shots", "--budget", "--family-option"]),
    ("domain", ["--datasets", "--domains", "--budget", "--family-option"]),
    ("refine", ["--scenarios", "--seed", "--budget", "--work"]),
    ("cross", ["--studies", "--method", "--seed", "--budget"]),
    ("lora", ["--family", "--family-option", "--iterations", "--store-tasks", "--eval-tasks", "--threads"]),
    ("l2o", ["--tasks", "--long-horizon", "--meta-batch", "--methods", "--head", "--workers", "--save"]),
])
def test_each_command_offers_its_config_fields(cli, name, options):
    code, out, err = cli("bench", name, "--help")
    assert code == 0, err
    for opt in ["--json", "--plot", "--quick", *options]:
        assert opt in out, (name, opt)
    assert "--variants" not in out and "--family-options" not in out  # not scalars: no option


def test_bench_transfer_end_to_end_through_the_command_line(cli, fake_features, tmp_path):
    target, plots = tmp_path / "out" / "transfer.json", tmp_path / "plots"
    code, out, err = cli("bench", "transfer", "--work", tmp_path / "w", "--n-way", "3", "--store-tasks", "3",
                         "--steps", "4", "--batch-size", "8", "--train-batch", "2", "--seeds", "1", "--eval-tasks",
                         "2", "--cross-tasks", "2", "--speedup-tasks", "1", "--latency-repeats", "2",
                         "--budget", "0.5", "--json", target, "--plot", plots)
    assert code == 0, err
    result = json.loads(target.read_text())
    assert result["benchmark"] == "transfer" and result["config"]["seeds"] == 1
    assert result["config"]["variants"][0]["train_options"]["time_limit"] == 0.5
    assert {r["dataset"] for r in result["rows"]} == {"openclipart", "fashion"}
    assert "2 held-out Openclipart tasks" in out and "2 Fashion-MNIST tasks" in out and "sample std" in out
    assert (plots / "transfer_accuracy_latency.png").stat().st_size > 0


def test_a_registered_benchmark_without_a_command_gets_one(tmp_path, monkeypatch):
    """A plugin's benchmark: register_benchmark + add_command makes `lohp bench NAME` with its
    config's options, the shared --json/--quick path and its tables."""
    import json
    from dataclasses import dataclass

    from typer.testing import CliRunner

    from lohp.bench import runner
    from lohp.cli import app
    from lohp.cli import bench as cli_bench
    from lohp.config import Config, setting

    @dataclass
    class ToyConfig(Config):
        what = "toy benchmark"
        size: int = setting(3, "Rows.")
        scale: float = setting(1.0, "Scale.")

        @classmethod
        def quick_config(cls):  # the --quick settings (the one preset name the runner calls)
            return cls(size=1)

        def __post_init__(self):
            if self.size <= 0:
                raise LohpError(f"size must be > 0 (got {self.size})")

    def run(cfg, note=None, train_progress=None):
        """A toy benchmark."""
        return {"benchmark": "toy", "rows": [{"method": f"m{i}", "accuracy": cfg.scale * i} for i in range(cfg.size)]}

    monkeypatch.setattr(runner, "BENCHMARKS", dict(runner.BENCHMARKS))
    runner.register_benchmark("toy-bench", ToyConfig, run,
                              tables=lambda r: [("toy", r["rows"], [("method", "method", ""), runner.ACCURACY])])
    commands = list(cli_bench.bench_app.registered_commands)
    try:
        assert cli_bench.add_missing_commands() == ["toy-bench"]
        out = tmp_path / "toy.json"
        r = CliRunner().invoke(app, ["bench", "toy-bench", "--size", "2", "--scale", "0.5", "--json", str(out)])
        assert r.exit_code == 0, r.output
        assert [row["accuracy"] for row in json.loads(out.read_text())["rows"]] == [0.0, 0.5]
        r = CliRunner().invoke(app, ["bench", "toy-bench", "--quick", "--json", str(tmp_path / "q.json")])
        assert r.exit_code == 0 and len(json.loads((tmp_path / "q.json").read_text())["rows"]) == 1
        r = CliRunner().invoke(app, ["bench", "toy-bench", "--size", "0"])
        assert isinstance(r.exception, LohpError) and "size must be > 0" in str(r.exception)  # the config checks
    finally:
        cli_bench.bench_app.registered_commands[:] = commands


def test_a_broken_benchmark_plugin_costs_only_its_own_command(tmp_path):
    """An installed lohp.benchmarks entry point that fails to import: lohp still runs every
    command, and says in one line which plugin is missing and why."""
    import os
    import subprocess
    import sys

    dist = tmp_path / "brokenplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lohp.benchmarks]\nbroken = no_such_module_xyz.bench\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "lohp", "bench", "--help"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and "digits" in r.stdout
    warning = [ln for ln in r.stderr.splitlines() if "broken" in ln]
    assert len(warning) == 1 and "failed to load" in warning[0] and "Traceback" not in r.stderr


def test_a_second_benchmark_of_a_registered_name_is_refused():
    from lohp.bench import runner

    before = runner.BENCHMARKS["digits"]
    with pytest.raises(LohpError, match="a benchmark named 'digits' is already registered"):
        runner.register_benchmark("digits", digits.DigitsBenchConfig, digits.run, digits.tables)
    assert runner.BENCHMARKS["digits"] is before


def test_adam_times_to_several_accuracies_match_a_plain_torch_optim_loop():
    """One Adam run serves several targets: each target's first step is the one a plain
    full-batch torch.optim.Adam loop (written here) first reaches it at."""
    import torch

    from lohp.bench.harness import adam_time_to_accuracy, adam_times_to_accuracies
    from lohp.tasks import make_family

    task = make_family("digits", n_way=3).heldout_tasks(1)[0]
    hp = {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    theta0 = task.init_theta(0)
    model = task.model()
    task.layout.load_into(model, theta0)
    params = [p for n, p in model.named_parameters() if n in task.layout.names]
    opt = torch.optim.Adam(params, lr=0.05)
    accs = []
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(task.x_train), task.y_train).backward()
        opt.step()
        with torch.no_grad():
            accs.append((model(task.x_eval).argmax(1) == task.y_eval).float().mean().item())
    targets = [accs[2], accs[9], 2.0]  # reached early, reached later, never reached
    got = adam_times_to_accuracies(task, theta0, targets, hp, 30)
    first = [next((i + 1 for i, a in enumerate(accs) if a >= t), None) for t in targets]
    assert [step for _, step in got] == first
    assert got[0][0] <= got[1][0] <= got[2][0]
    assert adam_time_to_accuracy(task, theta0, targets[1], hp, 30)[1] == first[1]
