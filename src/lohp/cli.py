"""The ``lohp`` command: thin. Parse, call the library, print.

User errors (:class:`lohp.LohpError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from lohp.errors import LohpError

app = typer.Typer(help="Lo-Hp: generate task weights with a learned forward-only optimizer.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
bench_app = typer.Typer(help="Benchmarks: lohp side by side with its baselines (table, JSON, plot).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()
err_console = Console(stderr=True)


@contextmanager
def progress_bar(description: str) -> Iterator[Any]:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                  transient=False) as prog:
        task = prog.add_task(description, total=None)

        def update(done: int, total: int, text: str | None = None) -> None:
            prog.update(task, completed=done, total=total, description=text or description)

        yield update


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise LohpError(f"{text!r} is not a number") from None


def parse_hparams(lr: str | None, hparam: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--lr sgd=0.1,adam=0.01`` and ``--hparam sam.rho=0.1`` -> {opt: {name: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in _split_list(lr or ""):
        name, sep, value = item.partition("=")
        if not sep:
            raise LohpError(f"--lr takes OPT=VALUE pairs, e.g. sgd=0.1,adam=0.01 (got {item!r})")
        out.setdefault(name, {})["lr"] = float(_parse_number(value))
    for item in hparam or []:
        key, sep, value = item.partition("=")
        opt, dot, name = key.partition(".")
        if not (sep and dot):
            raise LohpError(f"--hparam takes OPT.NAME=VALUE, e.g. sam.rho=0.1 (got {item!r})")
        out.setdefault(opt, {})[name] = _parse_number(value)
    return out


# --------------------------------------------------------------------------- prepare
@app.command()
def prepare(
    out: Path = typer.Option(..., "--out", help="Store folder (created; re-run to resume)."),
    family: str = typer.Option("digits", help="Task family."),
    optimizers: str = typer.Option("sgd,adam,sam", help="Comma-separated: sgd, adam, adamw, sam, sam-adam."),
    tasks: int = typer.Option(16, help="Number of source tasks."),
    seeds: int = typer.Option(1, help="Runs per task and optimizer (different theta_0)."),
    steps: int = typer.Option(32, help="Optimizer steps T per run."),
    batch_size: int = typer.Option(32, help="Minibatch size."),
    record_every: int = typer.Option(1, help="Store every s-th checkpoint (and always the last)."),
    lr: Optional[str] = typer.Option(None, help="Learning rates, e.g. sgd=0.1,adam=0.01 (defaults otherwise)."),
    hparam: Optional[list[str]] = typer.Option(None, help="Other hyper-parameters, e.g. sam.rho=0.1 (repeatable)."),
    n_way: int = typer.Option(5, help="Classes per task."),
    head: str = typer.Option("linear", help="Generated target: linear or mlp."),
    split: str = typer.Option("source", help="Task set: source or heldout."),
    task_start: int = typer.Option(0, help="First task seed."),
    init: str = typer.Option("standard", help="theta_0: standard (layer init), normal, zeros."),
    init_sigma: float = typer.Option(0.01, help="Std of theta_0 for --init normal."),
    seed: int = typer.Option(0, help="Base random seed."),
    shard_runs: int = typer.Option(64, help="Runs per shard (the unit of resume)."),
    device: str = typer.Option("cpu", help="torch device."),
    overwrite: bool = typer.Option(False, help="Replace an existing store in --out."),
) -> None:
    """Stage I: train runs on source tasks with real optimizers and store every checkpoint."""
    from lohp.trajectories import make_config, prepare as run_prepare

    family_config = {"n_way": n_way, "head": head} if family == "digits" else {}
    config = make_config(family=family, family_config=family_config, optimizers=_split_list(optimizers),
                         hparams=parse_hparams(lr, hparam), tasks=tasks, task_start=task_start, split=split,
                         seeds=seeds, steps=steps, batch_size=batch_size, record_every=record_every,
                         init=init, init_sigma=init_sigma, seed=seed, shard_runs=shard_runs)
    from lohp.trajectories.store import ensure_writable_dir

    ensure_writable_dir(out)  # fail before the progress bar appears
    with progress_bar("preparing") as update:
        store = run_prepare(out, config, device=_device(device), overwrite=overwrite, progress=update)
    console.print(f"stored {len(store)} trajectories in {out}; see them with: lohp inspect {out}")


def _device(name: str) -> str:
    import torch

    try:
        torch.empty(0, device=name)
    except (RuntimeError, ValueError) as exc:
        raise LohpError(f"device {name!r} is not usable here ({str(exc).splitlines()[0]}); try --device cpu") from None
    return name


# --------------------------------------------------------------------------- inspect
@app.command()
def inspect(
    store: Path = typer.Argument(..., help="Store folder written by lohp prepare."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    verify: bool = typer.Option(True, help="Verify every shard's checksum."),
) -> None:
    """Summarise a trajectory store and verify its checksums."""
    from lohp.trajectories import TrajectoryStore, summarize

    summary = summarize(TrajectoryStore.open(store), verify=verify)
    if as_json:
        print(json.dumps(summary, indent=1))
        return
    table = Table(title=f"{summary['path']}: {summary['trajectories']} trajectories, family {summary['family']}")
    for col in ("optimizer", "trajectories", f"final eval {summary['metric']}", "final train loss"):
        table.add_column(col, justify="right" if col != "optimizer" else "left")
    for name, d in summary["optimizers"].items():
        table.add_row(name, str(d["count"]), f"{d['final_metric_mean']:.4f} ± {d['final_metric_std']:.4f}",
                      f"{d['final_train_loss_mean']:.4f}")
    console.print(table)
    status = "complete" if summary["complete"] else (
        f"INCOMPLETE ({summary['shards']}/{summary['shards_planned']} shards): re-run lohp prepare with the same arguments")
    checks = {True: "all shard checksums verified", None: "checksums not verified"}[summary["checksums_ok"]]
    console.print(f"steps {summary['steps']} (every {summary['record_every']}, {summary['records_per_trajectory']} "
                  f"records), {summary['parameters']} parameters per trajectory, "
                  f"{summary['size_bytes'] / 1e6:.2f} MB on disk; {status}; {checks}")


# --------------------------------------------------------------------------- bench
@bench_app.command("prepare")
def bench_prepare(
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results here."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG bar chart here (file or folder)."),
    tasks: int = typer.Option(16, help="Tasks."),
    seeds: int = typer.Option(2, help="Seeds per task and optimizer."),
    steps: int = typer.Option(64, help="Steps per run."),
    batch_size: int = typer.Option(32, help="Minibatch size."),
    repeats: int = typer.Option(3, help="Timing repeats (best is kept)."),
    optimizers: str = typer.Option("sgd,adam,sam", help="Optimizers to time."),
    head: str = typer.Option("linear", help="linear or mlp."),
    quick: bool = typer.Option(False, help="Small workload for a fast check."),
) -> None:
    """Vectorised Stage I collector vs a per-run torch.optim loop (runs*steps per second)."""
    from lohp.bench import prepare as bp

    if quick:
        tasks, seeds, steps, repeats = 4, 2, 16, 1
    with progress_bar("bench prepare") as update:
        opts = _split_list(optimizers)
        counter = {"n": 0}

        def note(text: str) -> None:
            update(counter["n"], 2 * repeats * len(opts), text)
            counter["n"] += 1

        result = bp.run(family_config={"head": head}, optimizers=tuple(opts), tasks=tasks, seeds=seeds,
                        steps=steps, batch_size=batch_size, repeats=repeats, progress=note)
        update(counter["n"], counter["n"], "done")
    table = Table(title=f"Stage I throughput: {result['family']} {head} head, d={result['parameters']}, "
                        f"batch {batch_size}, {result['threads']} threads")
    for col in ("optimizer", "runs x steps", "per-run loop (run-steps/s)", "vectorised (run-steps/s)", "speedup"):
        table.add_column(col, justify="right")
    for r in result["rows"] + [{"optimizer": "all", "runs": None, **{k: result[k] for k in (
            "loop_run_steps_per_s", "vectorised_run_steps_per_s", "speedup")}}]:
        table.add_row(r["optimizer"], f"{r['runs']} x {r['steps']}" if r["runs"] else "",
                      f"{r['loop_run_steps_per_s']:.0f}", f"{r['vectorised_run_steps_per_s']:.0f}",
                      f"{r['speedup']:.1f}x")
    console.print(table)
    _write_outputs(result, json_out, plot, "bench_prepare.png", bp.plot)


def _write_outputs(result: dict[str, Any], json_out: Path | None, plot: Path | None, default_name: str,
                   plot_fn: Any) -> None:
    from lohp.trajectories.store import atomic_write_json, ensure_writable_dir

    if json_out is not None:
        ensure_writable_dir(json_out.parent if str(json_out.parent) else Path("."))
        atomic_write_json(json_out, result)
        console.print(f"wrote {json_out}")
    if plot is not None:
        target = plot / default_name if (plot.is_dir() or plot.suffix == "") else plot
        ensure_writable_dir(target.parent)
        plot_fn(result, target)
        console.print(f"wrote {target}")


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="lohp")
    except LohpError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(LohpError.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; re-run the same command to resume where it stopped")
        sys.exit(130)


if __name__ == "__main__":
    main()
