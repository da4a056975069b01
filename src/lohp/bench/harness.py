"""Shared benchmark machinery: gradient baselines, time-to-accuracy, tables, plots.

Every scenario benchmark produces ``{"benchmark": name, ..., "rows": [row, ...]}`` where a
row is a :class:`lohp.bench.rows.Row` written as a dict (at least ``method``, ``k``,
``steps``, ``accuracy``, ``accuracy_std``, ``accuracy_wide``, ``latency_ms``; for lo-hp
``time_to_accuracy_speedup``); statistics are over seeds (:func:`lohp.bench.rows.mean_std`).
Tables and plots read those dicts, as they read a result JSON.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lohp.optim.runs import evaluate_checkpoints, per_run_loop, train_runs
from lohp.plotting import accuracy_limits, pyplot, save_figure
from lohp.tasks import Task

# Rows drawn as horizontal reference lines in the learning-curve plots.
REFERENCE_ROWS = ("adam", "adam-cond", "prototype", "prototype-l2", "lda", "linear-probe")
WIDE = 10.0  # the robustness column: s_0 drawn this many times wider than in training


def seed_count(row: dict[str, Any]) -> int | None:
    """How many seeds a row's statistics are over: its per-seed list ``seeds``, else its
    ``n_seeds``; None when the row does not say."""
    seeds = row.get("seeds")
    if isinstance(seeds, list):
        return len(seeds)
    n = row.get("n_seeds")
    return int(n) if isinstance(n, int) and not isinstance(n, bool) else None


def seeds_text(n: int | None) -> str:
    """``1 seed``, ``3 seeds`` (``seeds`` when unknown)."""
    return "seeds" if n is None else f"{n} seed{'' if n == 1 else 's'}"


def format_accuracy(row: dict[str, Any], key: str = "accuracy", fmt: str = ".4f") -> str:
    """A mean with its spread as every table prints it: ``0.9712 ± 0.0008`` (sample std over
    seeds), ``0.9712 (1 seed)`` for one seed (no spread was measured, so none is printed),
    the bare mean when the row has no spread."""
    v = row.get(key)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    n = seed_count(row)
    if n == 1:
        return f"{format(v, fmt)} (1 seed)"
    std = row.get(f"{key}_std")
    if std is None or (isinstance(std, float) and np.isnan(std)):
        return format(v, fmt)
    return f"{format(v, fmt)} ± {format(std, fmt)}"


def format_cell(row: dict[str, Any], key: str, fmt: str) -> str:
    """One table cell as plain text (``-`` for a missing value); the accuracy column with its
    spread (:func:`format_accuracy`). Shared by the terminal tables and ``lohp report``."""
    v = row.get(key)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if key == "accuracy" and ("accuracy_std" in row or seed_count(row) is not None):
        return format_accuracy(row, fmt=fmt or ".4f")
    if fmt and isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, fmt)
    return str(v)


def spread_text(rows: Sequence[dict[str, Any]]) -> str:
    """What a figure's spread is, from its rows' seed counts: ``1 seed: no spread measured``,
    ``error bars / thin lines: ... over 3 seeds`` (the range of counts when rows differ)."""
    counts = sorted({n for n in (seed_count(r) for r in rows) if n is not None})
    if not counts:
        return "seeds not recorded"
    if counts == [1]:
        return "1 seed: no spread measured"
    many = f"{counts[0]}-{counts[-1]}" if len(counts) > 1 else str(counts[0])
    return f"spread: sample std over {many} seeds" + (" (rows of 1 seed: none)" if counts[0] == 1 else "")


# --------------------------------------------------------------------------- gradient baselines
def gradient_accuracy(tasks: Sequence[Task], optimizer: Any, theta0: torch.Tensor, steps: int, batch_size: int,
                      seed: int) -> tuple[list[float], torch.Tensor]:
    """Final eval metric of each task after ``steps`` steps of any optimizer with the
    Optimizer face (the Stage I protocol, batched), and the final weights ``[R, d]``."""
    thetas, _, _ = train_runs(tasks, optimizer, theta0, steps, batch_size, record_every=steps, seed=seed)
    return evaluate_checkpoints(tasks, thetas[:, -1:])["eval_metric"][:, 0].tolist(), thetas[:, -1]


def single_run_seconds(task: Task, optimizer: str, hparams: dict[str, Any], theta0: torch.Tensor, steps: int,
                       batch_size: int, seed: int) -> float:
    """Wall time of ``steps`` steps of one run with torch.optim (what a user would run)."""

    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    per_run_loop(task, optimizer, hparams, theta0, steps, batch_size, gen)
    return time.perf_counter() - t0


def adam_time_to_accuracy(task: Task, theta0: torch.Tensor, target: float, hparams: dict[str, Any],
                          max_steps: int) -> tuple[float, int | None]:
    """Seconds of full-batch torch.optim.Adam training (steps only, evaluation off the clock)
    until the eval metric first reaches ``target``; ``(seconds_used, None)`` if it never does."""
    return adam_times_to_accuracies(task, theta0, [target], hparams, max_steps)[0]


def adam_times_to_accuracies(task: Task, theta0: torch.Tensor, targets: list[float], hparams: dict[str, Any],
                             max_steps: int) -> list[tuple[float, int | None]]:
    """:func:`adam_time_to_accuracy` for several targets from one Adam run (it stops when the
    highest is reached): per target ``(seconds, step)``, or ``(seconds_used, None)``."""
    model = task.model()
    layout = task.layout
    layout.load_into(model, theta0)
    params = [p for n, p in model.named_parameters() if n in layout.names]
    opt = torch.optim.Adam(params, lr=hparams["lr"], betas=(hparams["beta1"], hparams["beta2"]), eps=hparams["eps"])
    out: list[tuple[float, int | None] | None] = [None] * len(targets)
    clock = 0.0
    for step in range(1, max_steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        task.loss_fn(model(task.x_train), task.y_train).mean().backward()
        opt.step()
        clock += time.perf_counter() - t0
        with torch.no_grad():
            metric = task.metric_fn(model(task.x_eval), task.y_eval).mean().item()
        for i, target in enumerate(targets):
            if out[i] is None and metric >= target:
                out[i] = (clock, step)
        if all(o is not None for o in out):
            break
    return [o if o is not None else (clock, None) for o in out]


# --------------------------------------------------------------------------- output
def print_table(rows: list[dict[str, Any]], title: str, columns: list[tuple[str, str, str]], console=None) -> None:
    """``columns``: (key, header, format) with format like '.4f' or '' for str; cells as
    :func:`format_cell` writes them (one seed says ``(1 seed)``, never ``± 0.0000``)."""

    table = Table(title=title)
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for r in rows:
        # escaped: names like lo-hp[sgd] are not rich markup
        table.add_row(*[escape(format_cell(r, key, fmt)) for key, _, fmt in columns])
    console = console or Console()
    if not console.is_terminal:  # a log file or pipe: do not squeeze the table into 80 columns
        console = Console(width=160, file=console.file)
    console.print(table)


def plot_accuracy_latency(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    save_figure(accuracy_latency_figure(rows, title), path)


def accuracy_latency_figure(rows: list[dict[str, Any]], title: str) -> Any:
    """Held-out accuracy against latency, a point per row; error bars are the sample std over
    seeds (none for one seed), and the y-axis says so and spans at least 0.05."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown = []
    for r in rows:
        if r.get("latency_ms") is None or r.get("accuracy") is None or not np.isfinite(r["accuracy"]):
            continue
        shown.append(r)
        learned = r["method"] not in ("adam", "sgd", "sam", "adam-n", "l2o", "l2o-entropy", "l2o-hessian")
        std = r.get("accuracy_std") if seed_count(r) != 1 else None
        ax.errorbar(r["latency_ms"], r["accuracy"], yerr=std or 0, fmt="o" if learned else "s",
                    color="C0" if learned else "C3", capsize=2)
        label = r["method"] + (f" k={r['k']}" if r.get("k") not in (None, 2) or r["method"] == "lo-hp" else "")
        ax.annotate(label, (r["latency_ms"], r["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if shown:
        ax.set_ylim(*accuracy_limits([r["accuracy"] + s * (r.get("accuracy_std") or 0) for r in shown
                                      for s in (-1, 1)]))
    ax.set_xscale("log")
    ax.set_xlabel("latency to produce the weights (ms, median, log scale)")
    ax.set_ylabel(f"held-out accuracy\n({spread_text(shown)})", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def plot_cosine_histograms(cosines: dict[str, list[float]], path: Path, title: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(-1, 1, 41)
    for name, values in cosines.items():
        ax.hist(values, bins=bins, alpha=0.55, label=f"{name} (mean {statistics.mean(values):.3f})")
    ax.set_xlabel("cosine(generated step, real optimizer step)")
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_learning_curves(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Held-out accuracy against training seconds (:func:`learning_curves_figure`) into
    ``path``; False (nothing written) when no row has a curve."""
    fig = learning_curves_figure(rows, title)
    if fig is None:
        return False
    save_figure(fig, path)
    return True


def learning_curves_figure(rows: list[dict[str, Any]], title: str) -> Any:
    """Held-out accuracy against training seconds, a line per learned method (mean over
    seeds at each evaluation, thin lines per seed), gradient and closed-form baselines as
    horizontal references; the y-axis holds the curves and the references and spans at
    least 0.05, and its label says what the spread is. None when no row has a curve."""
    curved = [r for r in rows if r.get("curves")]
    if not curved:
        return None

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ys: list[float] = []
    for i, r in enumerate(curved):
        color = f"C{i % 10}"
        several = sum(1 for c in r["curves"] if c) > 1
        for curve in r["curves"]:
            if curve and several:  # one seed: the mean line is that seed
                ax.plot(*zip(*curve), color=color, alpha=0.25, lw=0.8)
            ys += [float(y) for _, y in curve]
        n = min(len(c) for c in r["curves"])
        if n:
            pts = np.asarray([c[:n] for c in r["curves"]], dtype=float).mean(0)
            label = r["method"] + (f" k={r['k']}" if r.get("k") not in (None, 2) else "")
            label += f" ({seeds_text(sum(1 for c in r['curves'] if c))}, {n} evaluations)"
            ax.plot(pts[:, 0], pts[:, 1], color=color, marker=".", label=label)
    for r in rows:  # gradient and closed-form baselines as horizontal references
        if r.get("method") in REFERENCE_ROWS and r.get("accuracy") is not None and np.isfinite(r["accuracy"]):
            ax.axhline(r["accuracy"], ls="--", lw=0.8, color="grey")
            ax.annotate(r["method"], (0.01, r["accuracy"]), xycoords=("axes fraction", "data"), fontsize=7,
                        xytext=(0, 2), textcoords="offset points", color="grey")
            ys.append(float(r["accuracy"]))
    ax.set_ylim(*accuracy_limits(ys))
    counts = {sum(1 for c in r["curves"] if c) for r in curved}
    spread = ("1 seed per method: no spread measured" if counts == {1}
              else "line: mean over seeds; thin lines: each seed")
    ax.set_xlabel("training seconds (evaluation off the clock)")
    ax.set_ylabel(f"held-out accuracy (training-time evaluation tasks)\n{spread}", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig
