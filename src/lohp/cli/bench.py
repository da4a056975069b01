"""lohp bench ... and lohp demo: the benchmark commands.

Every benchmark registered in :mod:`lohp.bench.runner` is one command here: its options
are its config dataclass's fields (only the given ones reach the command; the rest come
from the default or the ``--quick`` settings), plus ``--json``, ``--plot`` and ``--quick``;
:func:`run_benchmark` builds the config, runs it and prints its tables."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.markup import escape

from lohp.bench import cross as bc
from lohp.bench import digits as bd
from lohp.bench import domain as bdom
from lohp.bench import fewshot as bfs
from lohp.bench import l2o as bl2o
from lohp.bench import lora as blora
from lohp.bench import prepare as bp  # noqa: F401  (importing registers bench prepare)
from lohp.bench import refine as br
from lohp.bench import runner
from lohp.bench import transfer as btr
from lohp.bench.harness import print_table
from lohp.bench.runner import Benchmark, TableSpec, benchmark, check_budget, load_plugins
from lohp.cli.common import (
    _check_outputs,
    _device,
    _run_bench,
    _write_outputs,
    app,
    bench_app,
    console,
    err_console,
    parse_family_options,
)
from lohp.cli.options import Group, with_options

DEMO_JSON = "demo.json"

JSON = typer.Option(None, "--json", help="Write the results here.")
PLOT = typer.Option(None, help="Folder for the PNG plots.")
QUICK = typer.Option(False, help="Small settings (under 5 minutes on 2 cores).")
BUDGET = typer.Option(None, help="Training budget per learned policy and seed, in seconds (same for every method).")
FAMILY_OPTION = typer.Option(None, "--family-option", help="KEY=VALUE for the scenario's task family "
                                                            "(repeatable), e.g. per_class=20.")


def _options(config_cls: type) -> Any:
    """The command's options from ``config_cls``: each given one reaches ``cfg_options``."""
    return with_options(Group("cfg_options", config_cls, unset=True,
                              unset_help="(default: {default}; --quick has its own)"))


def run_benchmark(name: str, json_out: Optional[Path], plot: Optional[Path], quick: bool, given: dict[str, Any],
                  budget: Optional[float] = None, family_option: Optional[list[str]] = None) -> dict[str, Any]:
    """Check the outputs, build ``(quick or default config).replace(**given)``, run it under
    one progress bar, print its tables, write the JSON and the plots."""
    bench = benchmark(name)
    _check_outputs(json_out, plot)
    given = dict(given)
    if budget is not None:  # a budget that is no field of the config: the benchmark's hook
        check_budget(budget)
        given.update(bench.budget(budget))
    if family_option:
        given[bench.family_setting] = parse_family_options(family_option)
    if "device" in given:
        _device(given["device"])
    cfg = bench.config(quick, given)
    if bench.check is not None:
        bench.check(cfg)  # before the progress bar
    result = _run_bench(bench.run, cfg, f"bench {name}", stage_progress=bench.stage_progress)
    show(bench, result, json_out, plot)
    return result


def print_tables(tables: list[TableSpec], title: Optional[str] = None) -> None:
    for heading, rows, columns in tables:
        print_table(rows, title or heading, columns, console)


def show(bench: Benchmark, result: dict[str, Any], json_out: Optional[Path], plot: Optional[Path],
         title: Optional[str] = None) -> None:
    """The benchmark's tables and notes, then the JSON and the plots (each path printed)."""
    print_tables(bench.tables(result), title)
    for line in bench.notes(result) if bench.notes is not None else []:
        console.print(line)
    _write_outputs(result, json_out, None, "", None)
    if plot is not None and bench.plots is not None:
        for p in bench.plots(result, plot):
            console.print(f"wrote {p}")


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    work: Path = typer.Option(Path("runs/demo"), help="Working folder (store, policy, plots); resumable."),
    iterations: int = typer.Option(300, help="Policy training iterations."),
    device: str = typer.Option("cpu", help="torch device."),
) -> None:
    """The main job on the built-in digits default: prepare, train lo-hp, generate, compare."""

    cfg = bd.DigitsBenchConfig(work=str(work), store_tasks=48, steps=32, iterations=iterations, budget=None, seeds=1,
                               eval_tasks=20, speedup_tasks=5, device=_device(device),
                               variants=[bd.Variant("lo-di", "lo-di"), bd.Variant("lo-hp", "lo-hp")], l2o_methods=[])
    result = _run_bench(bd.run, cfg, "demo")
    show(benchmark("digits"), result, work / DEMO_JSON, work, title="lohp demo: digits heads, held-out tasks")


# --------------------------------------------------------------------------- the registered benchmarks
@bench_app.command("digits")
@_options(bd.DigitsBenchConfig)
def bench_digits(json_out: Optional[Path] = JSON, plot: Optional[Path] = PLOT,
                 quick: bool = typer.Option(False, help="Small settings that finish in a few minutes."),
                 cfg_options: dict = None) -> None:  # type: ignore[assignment]
    """Every method on held-out digits tasks: accuracy, robustness, latency, speedup."""
    run_benchmark("digits", json_out, plot, quick, cfg_options)


@bench_app.command("transfer")
@_options(btr.TransferBenchConfig)
def bench_transfer(json_out: Optional[Path] = JSON, plot: Optional[Path] = PLOT, quick: bool = QUICK,
                   budget: Optional[float] = BUDGET, family_option: Optional[list[str]] = FAMILY_OPTION,
                   cfg_options: dict = None) -> None:  # type: ignore[assignment]
    """Linear heads on frozen EfficientNet-Lite0 features: held-out Openclipart classes, and Fashion-MNIST."""
    run_benchmark("transfer", json_out, plot, quick, cfg_options, budget, family_option)


@bench_app.command("few-shot")
@_options(bfs.FewShotBenchConfig)
def bench_few_shot(json_out: Optional[Path] = JSON, plot: Optional[Path] = PLOT, quick: bool = QUICK,
                   budget: Optional[float] = BUDGET, family_option: Optional[list[str]] = FAMILY_OPTION,
                   cfg_options: dict = None) -> None:  # type: ignore[assignment]
    """5-way 1-shot and 5-shot episodes from held-out Openclipart classes (95 % CI over episodes)."""
    run_benchmark("few-shot", json_out, plot, quick, cfg_options, budget, family_option)


@bench_app.command("domain")
@_options(bdom.DomainBenchConfig)
def bench_domain(json_out: Optional[Path] = JSON, plot: Optional[Path] = PLOT, quick: bool = QUICK,
                 budget: Optional[float] = BUDGET, family_option: Optional[list[str]] = FAMILY_OPTION,
                 cfg_options: dict = None) -> None:  # type: ignore[assignment]
    """Leave-one-domain-out on rotated MNIST / Fashion-MNIST; the whole MLP is generated."""
    run_benchmark("domain", json_out, plot, quick, cfg_options, budget, family_option)


@bench_app.command("refine")
@_options(br.RefineBenchConfig)
def bench_refine(json_out: Optional[Path] = JSON, plot: Optional[Path] = PLOT, quick: bool = QUICK,
                 cfg_options: dict = None) -> None:  # type: ignore[assignment]
    """Generate-then-refine: Adam from the standard init vs from generated weights.

    Starts: the standard init, hypernetwork, lo-di and lo-hp weights; accuracy by gradient
    step and the steps each needs to reach 0.99 x Adam-from-scratch at T."""
    run_benchmark("refine", json_out, plot, quick, cfg_options)


@bench_app.command("cross")
@_options(bc.CrossBenchConfig)
def bench_cross(json_out: Optional[Path] = JSON, plot: Optional[Path] = PLOT, quick: bool = QUICK,
                cfg_options: dict = None) -> None:  # type: ignore[assignment]
    """Cross-architecture generation: a policy serves MLP widths / class counts it never saw.

    Each unseen architecture beside a policy trained on it and Adam after T steps."""
    run_benchmark("cross", json_out, plot, quick, cfg_options)


@bench_app.command("lora")
@_options(blora.LoraBenchConfig)
def bench_lora(json_out: Optional[Path] = JSON,
               plot: Optional[Path] = typer.Option(None, help="Folder for the PNG plot."), quick: bool = QUICK,
               family_option: Optional[list[str]] = typer.Option(
                   None, "--family-option", help="Family setting KEY=VALUE (repeatable), e.g. rank=4 or n_way=4."),
               threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's; "
                                                                "1 on a busy machine)."),
               cfg_options: dict = None) -> None:  # type: ignore[assignment]
    """LoRA for MiniLM-L6 on held-out text tasks: fine-tuning, linear probe and every generator."""
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    run_benchmark("lora", json_out, plot, quick, cfg_options, family_option=family_option)


@bench_app.command("l2o")
@_options(bl2o.L2OBenchConfig)
def bench_l2o(json_out: Optional[Path] = JSON,
              plot: Optional[Path] = typer.Option(None, help="Write the PNG (loss curves + accuracy) here "
                                                             "(file or folder)."),
              quick: bool = typer.Option(False, help="Small settings (a few minutes)."),
              cfg_options: dict = None) -> None:  # type: ignore[assignment]
    """Learned LSTM optimizer (L2O-DM) with/without flatness regularizers vs Adam and SGD."""
    run_benchmark("l2o", json_out, plot, quick, cfg_options)


# --------------------------------------------------------------------------- bench prepare
# (registered in lohp.bench.prepare; its command comes from PrepareBenchConfig below)


# --------------------------------------------------------------------------- any other registered benchmark
def add_command(bench: Benchmark) -> None:
    """A command for a registered benchmark that has no hand-written one (a plugin's):
    --json, --plot, --quick, --budget / --family-option where it has those hooks, and one
    option per field of its config."""

    def command(json_out: Optional[Path] = None, plot: Optional[Path] = None, quick: bool = False,
                budget: Optional[float] = None, family_option: Optional[list[str]] = None,
                cfg_options: Optional[dict] = None) -> None:
        run_benchmark(bench.name, json_out, plot, quick, cfg_options or {}, budget, family_option)

    defaults = {"json_out": JSON, "plot": PLOT, "quick": QUICK, "budget": BUDGET, "family_option": FAMILY_OPTION,
                "cfg_options": None}
    keep = {"json_out", "plot", "quick", "cfg_options"} | ({"budget"} if bench.budget else set()) \
        | ({"family_option"} if bench.family_setting else set())
    hints = {"json_out": Optional[Path], "plot": Optional[Path], "quick": bool, "budget": Optional[float],
             "family_option": Optional[list[str]], "cfg_options": Optional[dict]}
    params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=defaults[n], annotation=hints[n])
              for n in hints if n in keep]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = (bench.run.__doc__ or bench.config_cls.__doc__ or f"The {bench.name} benchmark.").strip()
    bench_app.command(bench.name)(_options(bench.config_cls)(command))


def add_missing_commands() -> list[str]:
    """Commands for every registered benchmark (plugins included) without one."""
    have = {c.name for c in bench_app.registered_commands}
    added = []
    for name, bench in runner.BENCHMARKS.items():
        if name not in have:
            add_command(bench)
            added.append(name)
    return added


for _line in load_plugins()[1]:
    err_console.print(f"warning: {escape(_line)}", highlight=False, soft_wrap=True)
add_missing_commands()
