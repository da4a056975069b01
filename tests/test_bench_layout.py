"""``lohp.bench`` as a small framework: a core every benchmark imports, and no benchmark
importing another (read from the source with ``ast``, beside the import-cycle test in
tests/test_architecture.py); the typed result row, the one spread convention, the config
bases and the one ``--quick`` preset name."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
from pathlib import Path

import pytest

import lohp.bench  # noqa: F401  (registers every built-in benchmark)
from lohp.bench import runner
from lohp.bench.baselines import closed_form_row
from lohp.bench.harness import format_accuracy, format_cell
from lohp.bench.rows import Row, mean_std, public_rows
from lohp.bench.runner import BenchConfig, StudyConfig
from lohp.bench.scenario import ScenarioConfig
from lohp.errors import LohpError

BENCH = Path(lohp.bench.__file__).parent
# The core: what every benchmark may import. Anything else in lohp/bench is a benchmark
# (or ``lohp evaluate``) and imports the core only; the core imports no benchmark.
CORE = {"runner", "harness", "rows", "presets", "scenario", "baselines"}
PACKAGE = "__init__"  # imports every benchmark (to register them): no module imports it


def bench_imports(source: str) -> set[str]:
    """The modules of ``lohp/bench`` (file stems; ``__init__`` for the package) that a module
    of that folder imports, anywhere in its source (inside functions too)."""
    known = {p.stem for p in BENCH.glob("*.py")}
    found: set[str] = set()

    def add(dotted: str, names: list[str]) -> None:
        parts = dotted.split(".") if dotted else []
        if parts[:2] != ["lohp", "bench"]:
            return
        if len(parts) > 2:
            found.add(parts[2])
        else:  # from lohp.bench import X: X is a benchmark module, else a name of the package
            found.update(n if n in known else PACKAGE for n in names)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, [])
                if alias.name == "lohp.bench":
                    found.add(PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level == 1:  # relative, inside lohp.bench
                add("lohp.bench" + (f".{node.module}" if node.module else ""), names)
            elif node.level == 0 and node.module:
                add(node.module, names)
    return found


def layering_errors(sources: dict[str, str]) -> list[str]:
    """One line per import that breaks the layering (``sources``: file stem -> source)."""
    errors = []
    for stem, source in sorted(sources.items()):
        if stem == PACKAGE:
            continue
        for target in sorted(bench_imports(source) - {stem}):
            if target == PACKAGE:
                errors.append(f"bench/{stem}.py imports the lohp.bench package (every benchmark)")
            elif target not in CORE:
                kind = "the core module" if stem in CORE else "the benchmark"
                errors.append(f"{kind} bench/{stem}.py imports the benchmark bench/{target}.py")
    return errors


def test_no_benchmark_imports_another_and_the_core_imports_no_benchmark():
    sources = {p.stem: p.read_text() for p in BENCH.glob("*.py")}
    assert CORE <= set(sources), "a core module was renamed: update CORE"
    assert layering_errors(sources) == []


@pytest.mark.parametrize("source, culprit", [
    ("from lohp.bench import digits\n", "digits"),
    ("from lohp.bench.l2o import METHODS\n", "l2o"),
    ("import lohp.bench.cross as cross\n", "cross"),
    ("from .lora import POLICY\n", "lora"),
    ("from . import refine\n", "refine"),
    ("def late():\n    from lohp.bench.fewshot import COLUMNS\n", "fewshot"),
    ("import lohp.bench\n", "package"),
])
def test_the_layering_check_catches_a_benchmark_importing_another(source, culprit):
    ok = "from lohp.bench.scenario import Part\nfrom lohp.bench.rows import Row\nfrom lohp.tasks import Task\n"
    assert layering_errors({"mine": ok}) == []
    [error] = layering_errors({"mine": ok + source})
    assert culprit in error and "bench/mine.py" in error
    # the core importing a benchmark is refused too (harness once imported bench/prepare.py)
    assert layering_errors({"harness": source})


# --------------------------------------------------------------------------- rows and spread
def test_one_seed_has_no_spread():
    assert mean_std([0.5]) == (0.5, None)
    mean, std = mean_std([0.5, 0.7])
    assert mean == pytest.approx(0.6) and std == pytest.approx(math.sqrt(0.02))  # sample std, ddof = 1
    assert all(math.isnan(v) for v in mean_std([]))
    one = Row.over_seeds("adam", [0.91], steps=8).to_dict()
    assert one["accuracy_std"] is None and one["seeds"] == [0.91]
    assert json.loads(json.dumps(one))["accuracy_std"] is None
    assert format_accuracy(one) == "0.9100 (1 seed)" and format_cell(one, "accuracy", ".4f") == "0.9100 (1 seed)"
    assert format_accuracy({"method": "x", "accuracy": 0.9, "accuracy_std": None}) == "0.9000"
    three = Row.over_seeds("adam", [0.9, 0.91, 0.92]).to_dict()
    assert format_accuracy(three) == "0.9100 ± 0.0100"


def test_a_closed_form_row_is_one_seed_with_the_keys_written_before():
    row = closed_form_row("rule", ["a", "b"], lambda task: (0.5 if task == "a" else 0.7, 2.0))
    d = row.to_dict()
    assert set(d) == {"method", "k", "steps", "accuracy", "accuracy_std", "accuracy_wide", "latency_ms", "seeds",
                      "per_task"}
    assert d["accuracy"] == pytest.approx(0.6) and d["accuracy_std"] is None and d["seeds"] == [d["accuracy"]]
    assert d["k"] is d["steps"] is d["accuracy_wide"] is None and d["latency_ms"] == 2.0
    assert public_rows([row]) == [{k: v for k, v in d.items() if k != "per_task"}]


def test_a_row_carries_new_keys_in_extra_and_round_trips():
    row = Row.over_seeds("lo-hp", [0.8, 0.9], k=2, steps=16, latency_ms=3.0, per_task=[0.8], new_key={"a": 1})
    row.update({"time_to_accuracy_speedup": 40.0, "dataset": "fashion"})
    assert row.time_to_accuracy_speedup == 40.0 and row.extra == {"new_key": {"a": 1}, "dataset": "fashion"}
    assert row.get("dataset") == "fashion" and row.get("latency_ms") == 3.0 and row.get("nope", 1) == 1
    d = row.to_dict()
    assert list(d)[:7] == list(Row.ALWAYS) and "latency_with_condition_ms" not in d and d["new_key"] == {"a": 1}
    assert Row.from_dict(d) == row and Row.from_dict(d).to_dict() == d
    assert row["accuracy_std"] == d["accuracy_std"] and row["dataset"] == "fashion"  # reads as its JSON dict
    with pytest.raises(KeyError):
        row["latency_with_condition_ms"]  # not set, so not written
    with pytest.raises(LohpError, match="Row fields"):
        Row("x", 0.5, extra={"accuracy": 0.1})
    with pytest.raises(LohpError, match="needs method and accuracy"):
        Row.from_dict({"method": "x"})


# --------------------------------------------------------------------------- configs and presets
SCENARIOS = ("digits", "transfer", "few-shot", "domain", "lora")


def test_scenario_and_study_configs_share_their_bases():
    for name in SCENARIOS:
        assert issubclass(runner.benchmark(name).config_cls, ScenarioConfig), name
    for name in ("refine", "cross"):
        assert issubclass(runner.benchmark(name).config_cls, StudyConfig), name
    shared = {f.name for f in dataclasses.fields(ScenarioConfig)}
    assert {"work", "device", "seeds", "steps", "batch_size", "variants"} <= shared
    lora = runner.benchmark("lora").config_cls
    field = {f.name: f for f in dataclasses.fields(lora)}["seeds"]
    assert field.default == 1 and field.metadata["help"] == "Seeds per method."  # own default, shared help
    with pytest.raises(LohpError, match="no setting 'nope'"):
        BenchConfig.default("nope", 1)


def test_one_quick_preset_name():
    assert "quick" not in {f.name for f in dataclasses.fields(runner.Benchmark)}  # no per-benchmark hook
    for name, bench in runner.BENCHMARKS.items():
        preset = inspect.getattr_static(bench.config_cls, "quick_config", None)
        assert isinstance(preset, classmethod), name
        assert not callable(getattr(bench.config_cls, "quick", None)), name  # no second spelling
        assert bench.config(True) == bench.config_cls.quick_config(), name
    with pytest.raises(LohpError, match="takes no quick hook"):
        runner.register_benchmark("toy", BenchConfig, lambda cfg: {}, lambda result: [], quick=BenchConfig)
    assert "toy" not in runner.BENCHMARKS
