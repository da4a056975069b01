"""Benchmark: the vectorised Stage I collector against a per-run ``torch.optim`` loop.

Same tasks, optimizers, initial weights, steps and minibatch size, in one process. Both
sides draw a fresh minibatch per run and step and record every checkpoint; only the
training loops are timed (checkpoint evaluation is the same batched code for both and
sits outside the clock).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lohp.bench.runner import TableSpec, check_positive, register_benchmark
from lohp.config import Config, setting
from lohp.errors import LohpError
from lohp.optim import make_optimizer
from lohp.optim.runs import per_run_loop, train_runs
from lohp.plotting import figure_path, pyplot, save_figure
from lohp.tasks import make_family
from lohp.trajectories import make_config, prepare, ray_executor

PNG = "bench_prepare.png"
FAMILY = "digits"


@dataclass
class PrepareBenchConfig(Config):
    """``lohp bench prepare``: the vectorised collector vs a per-run torch.optim loop, or
    (``ray``) 1 vs 2 Ray workers on the same workload."""

    what = "bench prepare"

    tasks: int = setting(16, "Tasks.")
    seeds: int = setting(2, "Seeds per task and optimizer.")
    steps: int = setting(64, "Steps per run.")
    batch_size: int = setting(32, "Minibatch size.")
    repeats: int = setting(3, "Timing repeats (best is kept; not used with --ray).")
    optimizers: tuple[str, ...] = setting(("sgd", "adam", "sam"), "Optimizers to time.")
    head: str = setting("linear", "Digits head: linear or mlp.")
    ray: bool = setting(False, "Instead: Stage I on a local Ray cluster with 1 and 2 workers, the same workload "
                               "(ray_speedup).")

    def __post_init__(self) -> None:
        self.optimizers = tuple(self.optimizers)
        check_positive(self)
        if not self.optimizers:
            raise LohpError("--optimizers needs at least one optimizer, e.g. sgd,adam")

    @classmethod
    def quick_config(cls) -> "PrepareBenchConfig":
        return cls(tasks=4, seeds=2, steps=16, repeats=1)


def run(cfg: PrepareBenchConfig, note: Callable[[str], None] | None = None, progress: Any = None) -> dict[str, Any]:
    """Stage I throughput: the vectorised collector vs a per-run loop, or (``cfg.ray``) 1 vs 2
    Ray workers on the same workload; the result carries ``cfg`` (``progress`` unused)."""
    note = note or (lambda text: None)
    result = _run_ray(cfg, note) if cfg.ray else _run_throughput(cfg, note)
    return {**result, "config": cfg.to_dict()}


def _run_throughput(cfg: PrepareBenchConfig, note: Callable[[str], None]) -> dict[str, Any]:
    tasks, seeds, steps, batch_size, repeats = cfg.tasks, cfg.seeds, cfg.steps, cfg.batch_size, cfg.repeats
    fam = make_family(FAMILY, head=cfg.head)
    task_list = fam.source_tasks(tasks)
    runs = [(t, s) for t in task_list for s in range(seeds)]
    theta0 = torch.stack([t.init_theta(1000 * i + s) for i, (t, s) in enumerate(runs)])
    rows = []
    for name in cfg.optimizers:
        opt = make_optimizer(name)
        best_vec, best_loop = float("inf"), float("inf")
        for rep in range(repeats):
            note(f"{name}: vectorised, repeat {rep + 1}/{repeats}")
            _, _, sec = train_runs([t for t, _ in runs], opt, theta0, steps, batch_size, seed=rep)
            best_vec = min(best_vec, sec)
            note(f"{name}: per-run loop, repeat {rep + 1}/{repeats}")
            gen = torch.Generator().manual_seed(rep)
            start = time.perf_counter()
            for (t, _), th in zip(runs, theta0):
                per_run_loop(t, name, opt.hparams, th, steps, batch_size, gen)
            best_loop = min(best_loop, time.perf_counter() - start)
        work = len(runs) * steps
        rows.append({"optimizer": name, "runs": len(runs), "steps": steps,
                     "vectorised_s": best_vec, "loop_s": best_loop,
                     "vectorised_run_steps_per_s": work / best_vec, "loop_run_steps_per_s": work / best_loop,
                     "speedup": best_loop / best_vec})
    vec_total = sum(r["vectorised_s"] for r in rows)
    loop_total = sum(r["loop_s"] for r in rows)
    work = sum(r["runs"] * r["steps"] for r in rows)
    return {"benchmark": "prepare", "family": FAMILY, "parameters": task_list[0].layout.size,
            "batch_size": batch_size, "tasks": tasks, "seeds": seeds, "steps": steps,
            "threads": torch.get_num_threads(), "repeats": repeats, "rows": rows,
            "vectorised_run_steps_per_s": work / vec_total, "loop_run_steps_per_s": work / loop_total,
            "speedup": loop_total / vec_total}


def plot(result: dict[str, Any], path) -> None:
    plt = pyplot()

    rows = result["rows"]
    names = [r["optimizer"] for r in rows] + ["all"]
    vec = [r["vectorised_run_steps_per_s"] for r in rows] + [result["vectorised_run_steps_per_s"]]
    loop = [r["loop_run_steps_per_s"] for r in rows] + [result["loop_run_steps_per_s"]]
    x = torch.arange(len(names)).float()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(x - 0.2, loop, 0.4, label="per-run torch.optim loop")
    ax.bar(x + 0.2, vec, 0.4, label="lohp vectorised collector")
    ax.set_xticks(x.tolist(), names)
    ax.set_yscale("log")
    ax.set_ylabel("run-steps per second")
    ax.set_title(f"Stage I throughput, {result['family']} (d={result['parameters']}, batch {result['batch_size']})")
    for xi, v, l in zip(x.tolist(), vec, loop):
        ax.text(xi, max(v, l) * 1.1, f"{v / l:.1f}x", ha="center", fontsize=8)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _run_ray(cfg: PrepareBenchConfig, note: Callable[[str], None], shard_runs: int = 8,
             workers: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Stage I on a local Ray cluster with 1 and 2 workers, the same workload (a whole
    ``prepare`` into a fresh folder each time, shards written by the driver): run-steps
    per second side by side and ``ray_speedup`` = (2 workers) / (1 worker)."""
    family, family_config, optimizers = FAMILY, {"head": cfg.head}, cfg.optimizers
    tasks, seeds, steps, batch_size = cfg.tasks, cfg.seeds, cfg.steps, cfg.batch_size
    store_cfg = make_config(family=family, family_config=family_config, optimizers=optimizers, tasks=tasks,
                            seeds=seeds, steps=steps, batch_size=batch_size, shard_runs=shard_runs)
    n_shards = len(optimizers) * -(-tasks * seeds // shard_runs)
    ray = ray_executor.init("local", num_cpus=max(workers))  # a local cluster, whatever RAY_ADDRESS says
    work = tasks * seeds * len(optimizers) * steps
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        note("warming up the Ray workers")
        warm = make_config(family=family, family_config=family_config, optimizers=optimizers[:1], tasks=max(workers),
                           steps=2, batch_size=batch_size, shard_runs=1)
        prepare(Path(tmp) / "warm", warm, executor="ray", ray_address="local", ray_workers=max(workers))
        for w in workers:
            note(f"{w} Ray worker(s): {n_shards} shards")
            t0 = time.perf_counter()
            prepare(Path(tmp) / f"ray{w}", store_cfg, executor="ray", ray_address="local", ray_workers=w)
            sec = time.perf_counter() - t0
            rows.append({"executor": "ray", "workers": w, "seconds": sec, "run_steps_per_s": work / sec})
        note("local loop, 1 thread")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t0 = time.perf_counter()
            prepare(Path(tmp) / "local", store_cfg)
            sec = time.perf_counter() - t0
        finally:
            torch.set_num_threads(threads)
        rows.append({"executor": "local", "workers": 1, "seconds": sec, "run_steps_per_s": work / sec})
    by = {r["workers"]: r for r in rows if r["executor"] == "ray"}
    return {"benchmark": "prepare-ray", "family": family, "family_config": store_cfg["family_config"], "tasks": tasks,
            "seeds": seeds, "steps": steps, "optimizers": list(optimizers), "shards": n_shards,
            "shard_runs": shard_runs, "cpus": int(ray.cluster_resources().get("CPU", 0)), "rows": rows,
            "ray_speedup": by[max(workers)]["run_steps_per_s"] / by[min(workers)]["run_steps_per_s"]}


def tables(result: dict[str, Any], head: str = "linear") -> list[TableSpec]:
    """The throughput table of :func:`run`, or its workers table (``--ray``)."""
    if result["benchmark"] == "prepare-ray":
        return [(f"Stage I on Ray: {result['family']} {head} head, {result['shards']} shards of "
                 f"{result['shard_runs']} runs, {result['cpus']} CPUs", result["rows"],
                 [("executor", "executor", ""), ("workers", "workers", ""), ("seconds", "seconds", ".1f"),
                  ("run_steps_per_s", "run-steps / s", ".0f")])]
    total = {"optimizer": "all", **{k: result[k] for k in ("loop_run_steps_per_s", "vectorised_run_steps_per_s",
                                                           "speedup")}}
    rows = [{**r, "runs_x_steps": f"{r['runs']} x {r['steps']}" if r.get("runs") else "",
             "speedup_x": f"{r['speedup']:.1f}x"} for r in result["rows"] + [total]]
    return [(f"Stage I throughput: {result['family']} {head} head, d={result['parameters']}, "
             f"batch {result['batch_size']}, {result['threads']} threads", rows,
             [("optimizer", "optimizer", ""), ("runs_x_steps", "runs x steps", ""),
              ("loop_run_steps_per_s", "per-run loop (run-steps/s)", ".0f"),
              ("vectorised_run_steps_per_s", "vectorised (run-steps/s)", ".0f"), ("speedup_x", "speedup", "")])]


def _check(cfg: PrepareBenchConfig) -> None:
    if cfg.ray:
        ray_executor.check_ray("local")  # Ray installed: before the progress bar


def _tables(result: dict[str, Any]) -> list[TableSpec]:
    return tables(result, result["config"]["head"])


def _notes(result: dict[str, Any]) -> list[str]:
    return [f"ray_speedup (2 vs 1 workers): {result['ray_speedup']:.2f}x"] if "ray_speedup" in result else []


def plots(result: dict[str, Any], target: str | Path) -> list[Path]:
    """The bar chart at ``target`` (a file, or a folder that receives PNG)."""
    if "ray_speedup" in result:
        return []
    path = figure_path(target, PNG)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot(result, path)
    return [path]


HELP = """Vectorised Stage I collector vs a per-run torch.optim loop (run-steps per second).

    With --ray: 1 vs 2 Ray workers on the same workload (ray_speedup)."""

register_benchmark("prepare", PrepareBenchConfig, run, _tables, plots=plots, notes=_notes, check=_check,
                   help=HELP)
