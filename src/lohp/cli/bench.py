"""lohp bench ... and lohp demo: the benchmark commands.

Every benchmark registered in :mod:`lohp.bench.runner` is one command here: its options
are its config dataclass's fields (only the given ones reach the command; the rest come
from the default or the ``--quick`` settings), plus ``--json``, ``--plot`` and ``--quick``;
:func:`run_benchmark` builds the config, runs it and prints its tables."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.markup import escape

import lohp.bench  # noqa: F401  (importing it registers every built-in benchmark)
from lohp.bench import digits as bd
from lohp.bench import runner
from lohp.bench.harness import print_table
from lohp.bench.runner import Benchmark, TableSpec, benchmark, check_budget, load_plugins
from lohp.cli.common import (
    app,
    bench_app,
    check_device,
    check_outputs,
    console,
    err_console,
    parse_family_options,
    run_bench,
    write_result_json,
)
from lohp.cli.options import Group, with_options
from lohp.errors import LohpError

DEMO_JSON = "demo.json"

JSON = typer.Option(None, "--json", help="Write the results here.")
PLOT = typer.Option(None, help="Folder for the PNG plots.")
OVERWRITE = typer.Option(False, help="Replace an existing --json file (the plots in --plot are always redrawn).")
QUICK = typer.Option(False, help="Small settings (under 5 minutes on 2 cores).")
BUDGET = typer.Option(None, help="Training budget per learned policy and seed, in seconds (same for every method).")
THREADS = typer.Option(None, help="torch threads (default: torch's; 1 on a busy machine). Tables state the count.")
FAMILY_OPTION = typer.Option(None, "--family-option", help="KEY=VALUE for the scenario's task family "
                                                            "(repeatable), e.g. per_class=20.")


def _options(config_cls: type) -> Any:
    """The command's options from ``config_cls``: each given one reaches ``cfg_options``."""
    return with_options(Group("cfg_options", config_cls, unset=True,
                              unset_help="(default: {default}; --quick has its own)"))


def run_benchmark(name: str, json_out: Optional[Path], plot: Optional[Path], quick: bool, given: dict[str, Any],
                  budget: Optional[float] = None, family_option: Optional[list[str]] = None,
                  overwrite: bool = False) -> dict[str, Any]:
    """Check the outputs, build ``(quick or default config).replace(**given)``, run it under
    one progress bar, print its tables, write the JSON and the plots."""
    bench = benchmark(name)
    check_outputs(json_out, plot, overwrite)
    given = dict(given)
    if budget is not None:  # a budget that is no field of the config: the benchmark's hook
        check_budget(budget)
        given.update(bench.budget(budget))
    if family_option:
        given[bench.family_setting] = parse_family_options(family_option)
    if "device" in given:
        check_device(given["device"])
    cfg = bench.config(quick, given)
    if bench.check is not None:
        bench.check(cfg)  # before the progress bar
    result = run_bench(bench.run, cfg, f"bench {name}", stage_progress=bench.stage_progress)
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
    write_result_json(result, json_out)
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
    """The main job on the built-in digits default: prepare, train lo-hp, generate, compare (table, JSON, page)."""

    cfg = bd.demo_config(work, iterations, check_device(device))
    result = run_bench(bd.run, cfg, "demo")
    show(benchmark("digits"), result, work / DEMO_JSON, work, title="lohp demo: digits heads, held-out tasks")


# --------------------------------------------------------------------------- one command per registered benchmark
def add_command(bench: Benchmark) -> None:
    """``lohp bench NAME`` for a registered benchmark (built-in or a plugin's): --json,
    --plot, --quick, --threads (unless the config has its own), --budget / --family-option
    where it has those hooks, and one option per field of its config."""

    def command(json_out: Optional[Path] = None, plot: Optional[Path] = None, quick: bool = False,
                budget: Optional[float] = None, family_option: Optional[list[str]] = None,
                threads: Optional[int] = None, overwrite: bool = False, cfg_options: Optional[dict] = None) -> None:
        if threads is not None:
            if threads <= 0:
                raise LohpError(f"--threads must be >= 1 (got {threads})")
            torch.set_num_threads(threads)
        run_benchmark(bench.name, json_out, plot, quick, cfg_options or {}, budget, family_option, overwrite)

    defaults = {"json_out": JSON, "plot": PLOT, "quick": QUICK, "budget": BUDGET, "family_option": FAMILY_OPTION,
                "threads": THREADS, "overwrite": OVERWRITE, "cfg_options": None}
    own_threads = "threads" in {f.name for f in dataclasses.fields(bench.config_cls)}
    keep = {"json_out", "plot", "quick", "overwrite", "cfg_options"} | ({"budget"} if bench.budget else set()) \
        | ({"family_option"} if bench.family_setting else set()) | (set() if own_threads else {"threads"})
    hints = {"json_out": Optional[Path], "plot": Optional[Path], "quick": bool, "budget": Optional[float],
             "family_option": Optional[list[str]], "threads": Optional[int], "overwrite": bool,
             "cfg_options": Optional[dict]}
    params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=defaults[n], annotation=hints[n])
              for n in hints if n in keep]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = (bench.help or bench.run.__doc__ or bench.config_cls.__doc__
                       or f"The {bench.name} benchmark.").strip()
    bench_app.command(bench.name)(_options(bench.config_cls)(command))


def add_missing_commands() -> list[str]:
    """Commands for every registered benchmark (plugins included) that has none yet."""
    have = {c.name for c in bench_app.registered_commands}
    added = []
    for name, bench in sorted(runner.BENCHMARKS.items()):  # listed alphabetically
        if name not in have:
            add_command(bench)
            added.append(name)
    return added


for _line in load_plugins()[1]:
    err_console.print(f"warning: {escape(_line)}", highlight=False, soft_wrap=True)
add_missing_commands()
