"""What every lohp command shares: the typer apps, consoles, progress, option parsers, output checks."""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lohp.errors import LohpError
from lohp.io import atomic_write_json, check_output_file, ensure_writable_dir
from lohp.provenance import provenance
from lohp.report import page_path, write_result_page

app = typer.Typer(help="Lo-Hp: generate task weights with a learned forward-only optimizer.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
bench_app = typer.Typer(help="Benchmarks: lohp side by side with its baselines (table, JSON, plot).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()
err_console = Console(stderr=True)


LOG_INTERVAL = 10.0  # seconds between plain progress lines when stderr is not a terminal


def progress_count(done: float, total: float, unit: str | None = None) -> str:
    """``62/1000`` (iterations, ``62/?`` without a total), or ``12.3/30 s`` (a budget in seconds)."""
    if unit == "s":
        return f"{done:.1f}/{total:g} s"
    return f"{int(done)}/{int(total) if total else '?'}"


@contextmanager
def progress_bar(description: str) -> Iterator[Any]:
    """A rich progress bar on a terminal; elsewhere (a log file, CI) a plain line at most every
    LOG_INTERVAL seconds and whenever the stage text changes, so logs show progress.

    The bar's ``update(done, total, text=None, unit=None)``: ``unit="s"`` counts seconds of a
    time budget (``12.3/30 s``) instead of iterations."""
    if not err_console.is_terminal:
        start, last = time.perf_counter(), {"t": -math.inf, "stage": None}

        def plain(done: float, total: float, text: str | None = None, unit: str | None = None) -> None:
            now = time.perf_counter()
            text = text or description
            stage = text.split(":")[0] if ":" in text else text.split(" ")[0]  # the step, not its numbers
            if now - last["t"] < LOG_INTERVAL and stage == last["stage"]:
                return
            last["t"], last["stage"] = now, stage
            count = f" {progress_count(done, total, unit)}" if total else (f" {done}" if done else "")
            print(f"[{now - start:7.1f} s]{count} {text}", file=sys.stderr, flush=True)

        yield plain
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                  transient=False) as prog:
        task = prog.add_task(description, total=None, count="")

        def update(done: float, total: float, text: str | None = None, unit: str | None = None) -> None:
            prog.update(task, completed=done, total=total, description=text or description,
                        count=progress_count(done, total, unit) if (done or total) else "")

        yield update


def training_progress(update: Any, prefix: Any, text: Any) -> Any:
    """The ``progress(i, n, metrics)`` callback of a training run on ``update`` (a progress
    bar's): iterations ``i/n``, or for a time-budgeted run (``metrics`` holds ``time_limit``)
    training seconds against the budget, with the iteration in the text. ``prefix()`` and
    ``text(metrics)`` make the line."""

    def show(i: int, n: int, m: dict[str, float]) -> None:
        if m.get("time_limit"):
            update(m["train_seconds"], m["time_limit"], f"{prefix()} iteration {i} {text(m)}", unit="s")
        else:
            update(i, n, f"{prefix()} {text(m)}")

    return show


def split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _numbers(value: str, option: str) -> list[float]:
    try:
        return [float(v) for v in split_list(value)]
    except ValueError:
        raise LohpError(f"{option} takes comma-separated numbers, e.g. 1,10 (got {value!r})") from None


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
    for item in split_list(lr or ""):
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


def parse_settings(items: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` items: numbers, true/false, none, and comma lists parsed as for
    ``--family-option``."""
    return parse_family_options(items, option)


def parse_family_options(items: list[str] | None, option: str = "--family-option") -> dict[str, Any]:
    """``["rank=4", "targets=query,value", "layers=none"]`` -> {"rank": 4, "targets": [...], "layers": None}."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not (sep and key.strip()):
            raise LohpError(f"{option} takes KEY=VALUE, e.g. rank=4 (got {item!r})")

        def one(text: str) -> Any:
            if text.lower() == "none":
                return None
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            try:
                return _parse_number(text)
            except LohpError:
                return text
        out[key.strip()] = [one(v) for v in split_list(value)] if "," in value else one(value.strip())
    return out



data_app = typer.Typer(help="The scenarios' data packages: what is installed, and installing them.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


def check_device(name: str) -> str:
    try:
        torch.empty(0, device=name)
    except (RuntimeError, ValueError, AssertionError) as exc:  # a CPU-only torch asserts on "cuda"
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LohpError(f"device {name!r} is not usable here ({why}); try --device cpu") from None
    return name



def check_outputs(json_out: Path | None, plot: Path | None, overwrite: bool = False) -> None:
    """Fail on an unwritable --json/--plot, or a --json file or the report page beside it
    that exists (unless ``overwrite``), before a long benchmark runs, not after."""

    if json_out is not None:
        if json_out.is_dir():
            raise LohpError(f"--json {json_out} is a folder; give a file name")
        check_output_file(json_out)
        if (json_out.exists() or json_out.is_symlink()) and not overwrite:
            raise LohpError(f"--json {json_out} already exists; pass --overwrite to replace it, or choose another "
                            "file (results are never replaced silently)")
        page = page_path(json_out)
        check_output_file(page)
        if (page.exists() or page.is_symlink()) and not overwrite:
            raise LohpError(f"the report page {page} (written beside --json {json_out}) already exists; pass "
                            "--overwrite to replace it, or choose another --json file")
        ensure_writable_dir(json_out.parent if str(json_out.parent) else Path("."))
    if plot is not None:
        ensure_writable_dir(plot if (plot.is_dir() or plot.suffix == "") else plot.parent)


def write_result_json(result: dict[str, Any], json_out: Path | None) -> None:
    """The result (with where it comes from: command, machine, threads, date) as JSON, and
    its report page beside it (``lohp report``'s, e.g. ``digits.json`` -> ``digits.html``)."""
    if json_out is not None:
        ensure_writable_dir(json_out.parent if str(json_out.parent) else Path("."))
        result.setdefault("provenance", provenance())
        atomic_write_json(json_out, result)
        console.print(f"wrote {json_out}")
        console.print(f"wrote {write_result_page(result, json_out)} (open it in a browser)")


def run_bench(run: Any, cfg: Any, label: str, stage_progress: bool = False) -> dict[str, Any]:
    """``run(cfg, note, show)`` under one progress bar: stage text plus training progress
    (``stage_progress``: ``run(cfg, note, show, update)``, the bar itself for Stage I)."""
    with progress_bar(label) as update:
        stage = {"text": label}

        def note(text: str) -> None:
            stage["text"] = text
            update(0, 0, text)

        def text(m: dict[str, float]) -> str:
            acc = f" held-out acc {m['heldout_accuracy']:.3f}" if "heldout_accuracy" in m else ""
            return f"loss {m.get('loss', float('nan')):.3g}{acc}"

        show = training_progress(update, lambda: f"{stage['text']}:", text)
        return run(cfg, note, show, update) if stage_progress else run(cfg, note, show)



