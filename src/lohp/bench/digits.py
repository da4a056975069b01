"""``lohp bench digits``: every method on the same held-out digits tasks, one table.

Stage I runs once into ``WORK/store``; every policy trains into ``WORK/policies/NAME``.
Both resume, so an interrupted benchmark re-run with the same arguments continues where
it stopped. Statistics are over ``seeds``: each seed trains every learned method anew
(policy initialisation and batches) and draws new starting weights s_0 for every
held-out task; gradient baselines start from the same s_0.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lohp.bench.presets import regularizers_for
from lohp.bench.harness import plot_accuracy_latency, plot_cosine_histograms, plot_learning_curves, seeds_text
from lohp.bench.rows import public_rows
from lohp.bench.runner import ACCURACY, TableSpec, check_budget, register_benchmark, result
from lohp.bench.scenario import (
    ScenarioConfig,
    Variant,
    ablation_order,
    baseline_hparams,
    budgeted,
    gradient_rows,
    learned_row,
    matching_variants,
    optimizer_row,
    policy_dir,
    s0_sampler,
    speedup,
    stage_one,
)
from lohp.config import setting
from lohp.errors import LohpError
from lohp.generation import Generator
from lohp.l2o import LearnedOptimizer, MetaConfig, MetaTrainer
from lohp.optim import make_optimizer
from lohp.optim.runs import train_runs

# The digits table: the scenario columns with the Hessian trace of the final weights, no lr.
COLUMNS = [("method", "method", ""), ("k", "k", ""), ("steps", "steps", ""), ACCURACY,
           ("accuracy_wide", "acc. s0 x10", ".4f"), ("latency_ms", "latency ms", ".2f"),
           ("time_to_accuracy_speedup", "speedup vs Adam", ".1f"), ("hessian_trace", "Hessian trace", ".3f"),
           ("iterations_per_second", "train it/s", ".1f")]
ACCURACY_LATENCY_PNG = "digits_accuracy_latency.png"
LEARNING_CURVES_PNG = "digits_learning_curves.png"
STEP_COSINE_PNG = "digits_step_cosine.png"


def _variants() -> list[Variant]:
    return [
        Variant("hypernetwork", "hypernetwork", k=None), Variant("lo-di", "lo-di"), Variant("lo-di-noise", "lo-di-noise"),
        Variant("lo-op", "lo-op"), Variant("lo-hp-literal", "lo-hp-literal"), Variant("lo-hp-v1", "lo-hp-v1"),
        Variant("lo-hp", "lo-hp"),
        Variant("lo-hp", "lo-hp", k=1, ablation=True), Variant("lo-hp", "lo-hp", k=4, ablation=True),
        *matching_variants(),
        Variant("lo-hp[sgd]", "lo-hp", optimizers=["sgd"], ablation=True),
        Variant("lo-hp[adam]", "lo-hp", optimizers=["adam"], ablation=True),
        Variant("lo-hp[sgd+adam]", "lo-hp", optimizers=["sgd", "adam"], ablation=True),
        Variant("lo-hp-v1+hessian", "lo-hp-v1", loss_options={"flatness_weight": 0.1}, ablation=True),
    ]


@dataclass
class DigitsBenchConfig(ScenarioConfig):
    what = "bench digits"

    work: str = ScenarioConfig.default("work", "runs/bench-digits")
    variants: list[Variant] = ScenarioConfig.default("variants", factory=_variants)
    iterations: int = setting(800, "Training iterations per policy (instead of --budget).")
    budget: float | None = setting(30.0, "Training seconds per policy and seed, the same for every method "
                                         "(--quick uses 40 iterations).")
    ablation_seeds: int = setting(1, "Seeds per ablation row.")
    eval_tasks: int = setting(40, "Held-out tasks.")
    l2o_methods: list[str] = setting(factory=lambda: ["l2o", "l2o-entropy"],
                                     help="Learned-optimizer rows (L2O), comma-separated.")
    l2o_seeds: dict[str, int] = setting(factory=lambda: {"l2o": 3, "l2o-entropy": 1},
                                        help="Seeds per learned-optimizer row.")
    l2o_iterations: int = setting(400, "Meta-training iterations per learned optimizer.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_budget(self.budget)

    @classmethod
    def quick_config(cls) -> "DigitsBenchConfig":
        return cls(work="runs/bench-digits-quick", store_tasks=24, steps=16, iterations=40, budget=None, train_batch=8,
                   seeds=2, eval_tasks=8,
                   speedup_tasks=4, latency_repeats=10, l2o_methods=["l2o"], l2o_seeds={"l2o": 1},
                   l2o_iterations=16)


def demo_config(work: str | Path = "runs/demo", iterations: int = 300, device: str = "cpu") -> DigitsBenchConfig:
    """``lohp demo``'s settings: lo-di and lo-hp, one seed, on a small store; each policy is
    evaluated on held-out tasks CURVE_POINTS times during training (its learning curve)."""
    return DigitsBenchConfig(work=str(work), store_tasks=48, steps=32, iterations=iterations, budget=None, seeds=1,
                             eval_tasks=20, speedup_tasks=5, device=device,
                             variants=[Variant("lo-di", "lo-di"), Variant("lo-hp", "lo-hp")], l2o_methods=[])


def run(cfg: DigitsBenchConfig, note: Callable[[str], None] | None = None,
        train_progress: Callable[[int, int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    note = note or (lambda s: None)
    t_start = time.perf_counter()
    work = Path(cfg.work)
    note("Stage I: preparing the store")
    store = stage_one(work, "digits", {}, cfg.store_tasks, cfg.steps, cfg.batch_size, device=cfg.device)
    family = store.family()
    tasks = family.heldout_tasks(cfg.eval_tasks)
    T = cfg.steps
    hp, tuning = baseline_hparams(store, T, cfg.batch_size, note)
    s0_for = s0_sampler(tasks, store)

    rows = gradient_rows(tasks, hp, s0_for, cfg.seeds, T, cfg.batch_size,
                         [("adam", "adam", T), ("sgd", "sgd", T), ("sam", "sam", T), ("adam-n", "adam", T // 2)],
                         note, hessian=True)

    # ------------------------------------------------------------- learned optimizers (L2O)
    for name in cfg.l2o_methods:
        seeds = range(cfg.l2o_seeds.get(name, cfg.seeds))
        row = optimizer_row(name, tasks, lambda seed, m=name: _learned_optimizer(cfg, m, seed, note), s0_for,
                            len(seeds), T, cfg.batch_size, hessian=True)
        lats = []  # per seed: one task at a time on the engine (a learned optimizer has no torch.optim form)
        for seed in seeds:
            opt, s0 = _learned_optimizer(cfg, name, seed), s0_for(seed)
            lats.append(statistics.median(train_runs([t], opt, s0[i:i + 1], T, cfg.batch_size, record_every=T)[2]
                                          for i, t in enumerate(tasks[:5])) * 1e3)
        row.latency_ms = statistics.median(lats)
        rows.append(row)

    # ------------------------------------------------------------- learned methods
    variants = [v if cfg.budget is None else replace(v, train_options=budgeted(cfg.budget, **v.train_options))
                for v in cfg.variants]
    for v in variants:
        row, _ = learned_row(work, store, v, tasks, s0_for, cfg.ablation_seeds if v.ablation else cfg.seeds,
                             cfg.iterations, cfg.train_batch, note, cfg.device, cfg.latency_repeats, hessian=True,
                             progress=train_progress)
        if v.method == "lo-hp" and v.optimizers is None:
            note(f"time-to-accuracy of Adam vs lo-hp k={v.k}")
            row.update(speedup(tasks, s0_for(0), row.per_task, hp["adam"], row.latency_ms, T,
                               cfg.speedup_tasks, row.latency_with_condition_ms))
        rows.append(row)

    # ------------------------------------------------------------- figure 3: step cosines
    note("cosine between generated and real steps (lo-hp vs lo-op)")
    cosines = {}
    for name in ("lo-hp", "lo-op"):
        v = next((x for x in variants if x.name == name and x.k == 2), None)
        if v is None:
            continue
        cosines[name] = _step_cosines(cfg, Generator.load(policy_dir(work, v, 0), cfg.device), tasks, s0_for(0),
                                      hp["adam"])
    return result("digits", cfg, public_rows(rows), t_start, family=family.config(), heldout_tasks=len(tasks),
                  adam_tuning=tuning, ablation_order=ablation_order(rows),
                  cosines={k: {"mean": float(np.mean(c)), "values": c} for k, c in cosines.items()})


def _learned_optimizer(cfg: DigitsBenchConfig, name: str, seed: int, note: Callable[[str], None] | None = None
                       ) -> LearnedOptimizer:
    """Meta-train (or load the cached) coordinate-wise LSTM optimizer on the store's family."""

    if note is not None:
        note(f"learned optimizer {name} seed {seed}")
    out = Path(cfg.work) / "l2o" / f"{name}-s{seed}"
    if (out / "l2o.json").exists():
        return LearnedOptimizer.load(out)
    opt_reg, meta_reg = regularizers_for(name, "optimizee")
    trainer = MetaTrainer(MetaConfig(horizon=cfg.steps, iterations=cfg.l2o_iterations, seed=seed,
                                     optimizee_regularizer=opt_reg, meta_regularizer=meta_reg))
    trainer.optimizer.name = name
    trainer.train()
    trainer.optimizer.save(out)
    return trainer.optimizer


@torch.no_grad()
def _step_cosines(cfg: DigitsBenchConfig, gen: Generator, tasks, s0: torch.Tensor, adam_hp: dict[str, Any]) -> list[float]:
    """Cosines between the policy's step at real Adam states and Adam's own stride-k step."""

    k = gen.meta["k"]
    thetas, _, _ = train_runs(tasks, make_optimizer("adam", **adam_hp), s0, gen.meta["total_steps"],
                              cfg.batch_size, record_every=k, seed=123)
    b, n1, d = thetas.shape
    cond = torch.stack([t.condition(gen.policy.condition_points) for t in tasks])
    states = thetas[:, :-1].reshape(-1, d)
    jj = torch.arange(n1 - 1).repeat(b)
    mu = gen.policy(states, jj, cond.repeat_interleave(n1 - 1, 0))
    real = thetas[:, 1:].reshape(-1, d) - states
    return torch.nn.functional.cosine_similarity(mu, real, dim=-1).tolist()


def plots(result: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    a = directory / ACCURACY_LATENCY_PNG
    plot_accuracy_latency(result["rows"], a, "digits heads, held-out tasks: accuracy vs latency")
    paths = [a]
    curves = directory / LEARNING_CURVES_PNG
    if plot_learning_curves([r for r in result["rows"] if not r.get("ablation")], curves,
                            "digits heads: held-out accuracy vs training seconds"):
        paths.append(curves)
    if result["cosines"]:
        c = directory / STEP_COSINE_PNG
        plot_cosine_histograms({k: v["values"] for k, v in result["cosines"].items()}, c,
                               "generated vs real Adam steps on held-out tasks (paper Fig. 3)")
        paths.append(c)
    return paths


def tables(result: dict[str, Any]) -> list[TableSpec]:
    return [(f"digits heads, {result['heldout_tasks']} held-out tasks, {seeds_text(result['config']['seeds'])}",
             result["rows"], COLUMNS)]


def _options(given: dict[str, Any], base: DigitsBenchConfig) -> dict[str, Any]:
    """``--iterations`` trains for that many iterations instead of a time budget."""
    if "iterations" in given and given.get("budget") is not None:
        raise LohpError("give either --iterations or --budget, not both")
    return {**given, "budget": None} if "iterations" in given else given


HELP = """Every method on held-out digits tasks: accuracy, robustness, latency, speedup."""


register_benchmark("digits", DigitsBenchConfig, run, tables, plots=plots, options=_options, help=HELP)
