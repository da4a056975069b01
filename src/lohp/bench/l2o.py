"""Benchmark: a learned LSTM optimizer with and without flatness regularizers, vs Adam and SGD.

Rows (one per method):

- ``adam``, ``sgd``: the project's default hand-written optimizers (``lohp.optim.DEFAULTS``);
- ``l2o``: the coordinate-wise LSTM optimizer (L2O-DM) meta-trained on source digits tasks,
  no regularizer;
- ``l2o-hessian``: the same with the Hutchinson Hessian-trace regularizer;
- ``l2o-entropy``: the same with the local-entropy regularizer.

The regularizers act on the optimizee's loss during the unroll (``target="optimizee"``,
default), on the meta-objective (``"meta"``) or both, with the weights and estimator
settings in :data:`HESSIAN` / :data:`ENTROPY` unless overridden.

Protocol. Every method trains the family's head on the same ``tasks`` *held-out* digits
tasks (class combinations never seen in meta-training) from the same ``theta_0`` and the
same minibatch stream for a given seed, for ``long_horizon`` steps; the columns are read
at ``horizon`` (the step count the learned optimizers were meta-trained on, and T for
Adam/SGD) and at ``long_horizon`` (meta-testing beyond the trained horizon).
``seed`` s means: optimizee init and minibatches seeded by s, and for the learned rows
also an optimizer meta-trained with seed s (its own LSTM init and source-task stream), so
``accuracy_std`` covers meta-training variance too. Per seed, accuracy is averaged over
the held-out tasks; ``accuracy`` / ``accuracy_std`` are the mean and the sample standard
deviation (ddof = 1) of the per-seed values. ``train_loss`` is the full training-split
loss at ``horizon``; ``hessian_trace`` (Hutchinson, ``probes`` Rademacher probes) and
``top_eigenvalue`` (power iteration) are of that loss at the weights after ``horizon``
steps, averaged over tasks and seeds. ``latency_ms`` is the wall time of training one task
for ``horizon`` steps (median over ``latency_tasks`` single-task runs, after a warm-up).

Meta-training jobs run in ``workers`` processes (one torch thread each); evaluation runs
in this process with ``threads`` torch threads.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lohp.bench.harness import seeds_text
from lohp.bench.presets import ENTROPY, HESSIAN, LEARNED, TARGETS, regularizers_for  # noqa: F401
from lohp.bench.rows import Row, mean_std, public_rows
from lohp.bench.runner import ACCURACY, TableSpec, register_benchmark
from lohp.config import Config, setting
from lohp.errors import LohpError
from lohp.flatness import flatness_metrics, hutchinson_trace, task_loss_fn
from lohp.io import ensure_writable_dir
from lohp.l2o import LearnedOptimizer, MetaConfig, MetaTrainer, check_unroll, run_optimizee
from lohp.optim import make_optimizer
from lohp.optim.runs import train_runs
from lohp.plotting import figure_path, pyplot, save_figure
from lohp.tasks import make_family

METHODS = ("adam", "sgd", "l2o", "l2o-hessian", "l2o-entropy")
PNG = "bench_l2o.png"


def _train_job(job: dict[str, Any]) -> dict[str, Any]:
    """Meta-train one learned optimizer (runs in a worker process) and save it."""
    torch.set_num_threads(int(job.get("threads", 1)))

    trainer = MetaTrainer(MetaConfig(**job["config"]))
    trainer.optimizer.name = job["method"]
    result = trainer.train()
    trainer.optimizer.save(job["out"])
    tail = result.history[-max(1, len(result.history) // 10):]
    return {"method": job["method"], "seed": job["config"]["seed"], "out": job["out"], "seconds": result.seconds,
            "final_meta_loss": float(np.mean([h["meta_loss"] for h in tail])),
            "first_meta_loss": float(np.mean([h["meta_loss"] for h in result.history[:len(tail)]]))}


def _run_jobs(jobs: list[dict[str, Any]], workers: int, note: Callable[[str], None]) -> list[dict[str, Any]]:
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            note(f"meta-training {job['method']} (seed {job['config']['seed']})")
            out.append(_train_job(job))
        return out

    results = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_train_job, job) for job in jobs]
        note(f"meta-training {len(jobs)} learned optimizers in {workers} processes")
        try:
            for fut in as_completed(futures):
                r = fut.result()
                results.append(r)
                note(f"meta-trained {r['method']} (seed {r['seed']}) in {r['seconds']:.0f} s")
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    order = {(j["method"], j["config"]["seed"]): i for i, j in enumerate(jobs)}
    return sorted(results, key=lambda r: order[(r["method"], r["seed"])])


def _latency_ms(optimizer: Any, tasks: list, horizon: int, batch_size: int) -> float:
    times = []
    for i, task in enumerate([tasks[0]] + list(tasks)):  # the first run is a warm-up
        theta0 = task.init_theta(10_000 + i)[None]
        _, _, sec = train_runs([task], optimizer, theta0, horizon, batch_size, record_every=horizon, seed=i)
        times.append(sec)
    return 1000 * statistics.median(times[1:])


def _check_settings(cfg: "L2OBenchConfig") -> None:
    """Every setting :func:`run` would reject, one line each (cheap: no task family built;
    ``--head`` is checked by the ``check`` hook, which builds the family)."""
    check_unroll(cfg.horizon, cfg.truncation)
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise LohpError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    for name in ("tasks", "seeds", "iterations", "meta_batch", "batch_size", "probes", "latency_tasks", "workers",
                 "threads", "long_horizon"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise LohpError(f"{name} must be a positive whole number (got {v!r})")
    if cfg.long_horizon < cfg.horizon:
        raise LohpError(f"long horizon {cfg.long_horizon} is shorter than the trained horizon {cfg.horizon}")
    for m in cfg.methods:
        if m in LEARNED:
            regularizers_for(m, cfg.target, cfg.hessian, cfg.entropy)
    if cfg.target not in TARGETS:
        raise LohpError(f"unknown regularizer target {cfg.target!r}; choose one of {', '.join(TARGETS)}")


@dataclass
class L2OBenchConfig(Config):
    """The settings of :func:`run` (``head``: the digits family's; ``quick``: recorded in the result)."""

    what = "bench l2o"

    tasks: int = setting(30, "Held-out tasks.")
    seeds: int = setting(3, "Seeds per method.")
    horizon: int = setting(32, "Unroll length the L2O is meta-trained on = T for Adam/SGD.")
    long_horizon: int = setting(128, "Meta-test horizon beyond training (4 x --horizon when that is longer).")
    truncation: int = setting(8, "Truncated-BPTT segment length; must divide --horizon.")
    iterations: int = setting(400, "Meta-updates per learned optimizer.")
    meta_batch: int = setting(8, "Source tasks per meta-training episode.")
    batch_size: int = setting(32, "Optimizee minibatch size.")
    probes: int = setting(32, "Rademacher probes of the Hessian-trace estimate.")
    latency_tasks: int = setting(10, "Single-task runs of the latency measurement.")
    meta_lr: float = setting(3e-3, "Meta-training learning rate.")
    methods: list[str] = setting(factory=lambda: list(METHODS), help="Rows, comma-separated.")
    target: str = setting("optimizee", "Regularize the optimizee loss, the meta-objective, or both.")
    hessian: str | None = setting(None, "Hessian regularizer settings, e.g. weight=0.05,probes=2.")
    entropy: str | None = setting(None, "Local-entropy settings, e.g. weight=1,gamma=3,steps=8.")
    head: str = setting("linear", "Optimizee: linear or mlp head.")
    workers: int = setting(2, "Processes meta-training in parallel (one torch thread each).")
    threads: int = setting(1, "torch threads for evaluation and latency.")
    save: str | None = setting(None, "Keep the meta-trained optimizers here (safetensors + JSON).")
    quick: bool = setting(False, "The quick settings (recorded in the result).", cli=False)

    def __post_init__(self) -> None:
        _check_settings(self)

    @classmethod
    def quick_config(cls) -> "L2OBenchConfig":
        return cls(tasks=12, long_horizon=64, iterations=48, meta_batch=6, probes=16, latency_tasks=5, quick=True)

    @property
    def family_config(self) -> dict[str, Any]:
        """The digits family's settings of every task (meta-training and held-out)."""
        return {"n_way": 5, "head": self.head}


# The settings FULL and QUICK list (those the quick run changes, and their neighbours).
PRESET = ("tasks", "seeds", "horizon", "long_horizon", "truncation", "iterations", "meta_batch", "batch_size",
          "probes", "latency_tasks")


def run(cfg: L2OBenchConfig | None = None, note: Callable[[str], None] | None = None, progress: Any = None,
        **settings: Any) -> dict[str, Any]:
    """Meta-train the learned rows, evaluate every row on held-out tasks; one JSON-able dict.

    ``settings`` instead of ``cfg``: :class:`L2OBenchConfig`'s fields by name (the earlier
    keyword call, ``run(tasks=3, seeds=2, ...)``). ``progress`` is unused (no policy training)."""
    if cfg is None:
        cfg = L2OBenchConfig.from_dict(settings)
    elif settings:
        raise LohpError("give the l2o benchmark a config or settings by name, not both")
    note = note or (lambda text: None)
    start = time.perf_counter()
    family = make_family("digits", **cfg.family_config)
    regs = {m: regularizers_for(m, cfg.target, cfg.hessian, cfg.entropy) for m in cfg.methods if m in LEARNED}
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    tmp = None
    try:
        if cfg.save is not None:
            root = ensure_writable_dir(Path(cfg.save))
        else:
            tmp = tempfile.TemporaryDirectory(prefix="lohp-l2o-")
            root = Path(tmp.name)
        meta_start = time.perf_counter()
        trained = _run_jobs(_jobs(cfg, regs, root), cfg.workers, note)
        meta_wall = time.perf_counter() - meta_start
        optimizers = {(r["method"], r["seed"]): LearnedOptimizer.load(r["out"]) for r in trained}
        info = {(r["method"], r["seed"]): r for r in trained}
        heldout = family.heldout_tasks(cfg.tasks)
        rows = [_evaluate(cfg, m, optimizers, heldout, note) for m in cfg.methods]
        for row in rows:
            row.update(_method_info(cfg, row.method, regs, info))
    finally:
        torch.set_num_threads(threads_before)
        if tmp is not None:
            tmp.cleanup()
    return {"benchmark": "l2o", "family": "digits", "family_config": cfg.family_config,
            "parameters": heldout[0].layout.size, "heldout_tasks": cfg.tasks, "seeds": cfg.seeds,
            "horizon": cfg.horizon, "long_horizon": cfg.long_horizon, "truncation": cfg.truncation,
            "meta_iterations": cfg.iterations, "meta_batch": cfg.meta_batch, "meta_lr": cfg.meta_lr,
            "batch_size": cfg.batch_size, "regularizer_target": cfg.target, "probes": cfg.probes,
            "latency_tasks": cfg.latency_tasks, "workers": cfg.workers, "threads": cfg.threads,
            "cpu_count": os.cpu_count(), "quick": cfg.quick, "meta_train_wall_seconds": meta_wall,
            "seconds": time.perf_counter() - start, "saved_to": str(cfg.save) if cfg.save is not None else None,
            "rows": public_rows(rows)}


def _jobs(cfg: L2OBenchConfig, regs: dict[str, tuple[str | None, str | None]], root: Path) -> list[dict[str, Any]]:
    """One meta-training job per learned method and seed, saved under ``root``."""
    base = dict(family="digits", family_config=cfg.family_config, horizon=cfg.horizon, truncation=cfg.truncation,
                iterations=cfg.iterations, meta_batch=cfg.meta_batch, batch_size=cfg.batch_size,
                meta_lr=cfg.meta_lr, checkpoint_every=max(1, cfg.iterations))
    return [{"method": m, "config": MetaConfig(**base, seed=s, optimizee_regularizer=opt_reg,
                                                meta_regularizer=meta_reg).to_dict(),
             "threads": 1, "out": str(root / f"{m}-seed{s}")}
            for m, (opt_reg, meta_reg) in regs.items() for s in range(cfg.seeds)]


def _evaluate(cfg: L2OBenchConfig, m: str, optimizers: dict[tuple[str, int], Any], heldout: list,
              note: Callable[[str], None]) -> Row:
    """Row ``m``: every seed's optimizer (a learned one meta-trained with that seed) trains the
    held-out tasks for ``long_horizon`` steps; accuracy, losses and flatness at ``horizon``
    and ``long_horizon``, mean (± sample std) over seeds; latency of seed 0's optimizer."""
    note(f"evaluating {m} on {cfg.tasks} held-out tasks x {cfg.seeds} seeds")
    horizon, long_horizon = cfg.horizon, cfg.long_horizon
    loss_fn = task_loss_fn(heldout, "train")
    per_seed: dict[str, list[float]] = {k: [] for k in ("acc", "acc_long", "loss", "loss_long", "eval_loss",
                                                        "trace", "eig", "trace_long")}
    curves, acc_curves = [], []
    for s in range(cfg.seeds):
        opt = optimizers[(m, s)] if m in LEARNED else make_optimizer(m)
        res = run_optimizee(opt, heldout, long_horizon, seed=s, batch_size=cfg.batch_size)
        em, tl = res["eval_metric"], res["train_loss"]
        per_seed["acc"].append(float(em[:, horizon].mean()))
        per_seed["acc_long"].append(float(em[:, long_horizon].mean()))
        per_seed["loss"].append(float(tl[:, horizon].mean()))
        per_seed["loss_long"].append(float(tl[:, long_horizon].mean()))
        per_seed["eval_loss"].append(float(res["eval_loss"][:, horizon].mean()))
        fm = flatness_metrics(heldout, res["thetas"][:, horizon], cfg.probes, seed=s)
        per_seed["trace"].append(float(fm["hessian_trace"].mean()))
        per_seed["eig"].append(float(fm["top_eigenvalue"].mean()))
        tr_long = hutchinson_trace(loss_fn, res["thetas"][:, long_horizon], cfg.probes,
                                   torch.Generator().manual_seed(s))
        per_seed["trace_long"].append(float(tr_long.detach().mean()))
        curves.append(tl.mean(0))
        acc_curves.append(em.mean(0))
    note(f"timing {m}")
    lat_opt = optimizers[(m, 0)] if m in LEARNED else make_optimizer(m)
    acc, acc_std = mean_std(per_seed["acc"])
    acc_long, acc_long_std = mean_std(per_seed["acc_long"])
    trace, trace_std = mean_std(per_seed["trace"])
    return Row(m, acc, acc_std, n_seeds=cfg.seeds, steps=horizon,
               latency_ms=_latency_ms(lat_opt, heldout[:cfg.latency_tasks], horizon, cfg.batch_size),
               extra={"train_loss": float(np.mean(per_seed["loss"])), "hessian_trace": trace,
                      "hessian_trace_std": trace_std, "top_eigenvalue": float(np.mean(per_seed["eig"])),
                      "eval_loss": float(np.mean(per_seed["eval_loss"])), "accuracy_long": acc_long,
                      "accuracy_long_std": acc_long_std, "train_loss_long": float(np.mean(per_seed["loss_long"])),
                      "hessian_trace_long": float(np.mean(per_seed["trace_long"])),
                      "accuracy_per_seed": per_seed["acc"],
                      "curve_train_loss": torch.stack(curves).mean(0).tolist(),
                      "curve_accuracy": torch.stack(acc_curves).mean(0).tolist()})


def _method_info(cfg: L2OBenchConfig, m: str, regs: dict[str, tuple[str | None, str | None]],
                 info: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """A learned row's regularizers and meta-training record, a hand-written row's hyper-parameters."""
    if m not in LEARNED:
        return {"hparams": make_optimizer(m).hparams}
    runs = [info[(m, s)] for s in range(cfg.seeds)]
    return {"optimizee_regularizer": regs[m][0], "meta_regularizer": regs[m][1],
            "meta_train_seconds": float(np.mean([r["seconds"] for r in runs])),
            "meta_loss_first": float(np.mean([r["first_meta_loss"] for r in runs])),
            "meta_loss_final": float(np.mean([r["final_meta_loss"] for r in runs]))}


def plot(result: dict[str, Any], path) -> None:
    plt = pyplot()

    rows = result["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        curve = r["curve_train_loss"]
        style = "--" if r["method"] in ("adam", "sgd") else "-"
        ax1.plot(range(len(curve)), curve, label=r["method"], lw=1.5, ls=style)
    ax1.axvline(result["horizon"], color="grey", lw=0.8, ls=":")
    ax1.text(result["horizon"], max(rows[0]["curve_train_loss"]) * 0.9, " trained horizon", fontsize=8,
             color="grey")
    ax1.set_yscale("log")
    ax1.set_xlabel("optimizee step")
    ax1.set_ylabel("training loss (full split, mean over tasks and seeds)")
    ax1.set_title(f"held-out digits tasks ({result['heldout_tasks']}), {result['seeds']} seeds")
    ax1.legend(fontsize=8)
    names = [r["method"] for r in rows]
    x = np.arange(len(rows))
    acc = [r["accuracy"] for r in rows]
    err = [r["accuracy_std"] or 0.0 for r in rows]
    ax2.bar(x, acc, 0.6, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
    lo = min(a - e for a, e in zip(acc, err))
    ax2.set_ylim(max(0.0, lo - 0.03), min(1.0, max(a + e for a, e in zip(acc, err)) + 0.02))
    ax2.set_xticks(x, names, rotation=15)
    ax2.set_ylabel(f"test accuracy after {result['horizon']} steps")
    for xi, r in zip(x, rows):
        ax2.text(xi, r["accuracy"] + (r["accuracy_std"] or 0) + 0.002, f"tr H={r['hessian_trace']:.2f}",
                 ha="center", fontsize=7)
    ax2.set_title("test accuracy (mean ± sample std over seeds), tr H of final weights", fontsize=10)
    save_figure(fig, path)


def plots(result: dict[str, Any], target: str | Path) -> list[Path]:
    """The figure of :func:`plot` at ``target`` (a file, or a folder: ``target / PNG``)."""
    path = figure_path(target, PNG)
    ensure_writable_dir(path.parent)
    plot(result, path)
    return [path]


def tables(result: dict[str, Any]) -> list[TableSpec]:
    cols = [("method", "method", ""), ACCURACY, ("accuracy_long", f"acc@{result['long_horizon']}", ".4f"),
            ("train_loss", "loss", ".4f"), ("hessian_trace", "tr H", ".3f"), ("latency_ms", "ms", ".1f"),
            ("meta_train_seconds", "meta s", ".0f")]
    return [(f"L2O on {result['heldout_tasks']} held-out digits tasks ({result['family_config']['head']} head, "
             f"d={result['parameters']}), {seeds_text(result['seeds'])}, T={result['horizon']}", result["rows"], cols)]


def notes(result: dict[str, Any]) -> list[str]:
    return [f"accuracy at T={result['horizon']} steps (acc@{result['long_horizon']}: meta-test beyond the "
            "trained horizon); loss = training loss; tr H = Hessian trace of the final weights; "
            "ms = training wall time per task",
            f"regularizers on: {result['regularizer_target']}; total {result['seconds']:.0f} s"]


def _options(given: dict[str, Any], base: L2OBenchConfig) -> dict[str, Any]:
    """A ``--horizon`` past the preset's long horizon without ``--long-horizon``: 4 x the horizon."""
    horizon = given.get("horizon", base.horizon)
    if "long_horizon" not in given and base.long_horizon < horizon:
        return {**given, "long_horizon": 4 * horizon}
    return given


def _check(cfg: L2OBenchConfig) -> None:
    """The digits family of ``--head`` builds (before the progress bar; the rest the config checked)."""
    make_family("digits", **cfg.family_config)


# The settings of the full and the quick run, as dicts (the keywords of run).
FULL = {name: getattr(L2OBenchConfig(), name) for name in PRESET}
QUICK = {name: getattr(L2OBenchConfig.quick_config(), name) for name in PRESET}

HELP = """Learned LSTM optimizer (L2O-DM) with/without flatness regularizers vs Adam and SGD."""


register_benchmark("l2o", L2OBenchConfig, run, tables, plots=plots, notes=notes, options=_options, check=_check,
                   help=HELP)

__all__ = ["ENTROPY", "FULL", "HESSIAN", "L2OBenchConfig", "METHODS", "PNG", "QUICK", "plot", "plots",
           "regularizers_for", "run", "tables"]
