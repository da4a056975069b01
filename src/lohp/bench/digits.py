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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lohp.bench.harness import (WIDE, adam_time_to_accuracy, gradient_accuracy, mean_std, plot_accuracy_latency,
                                plot_cosine_histograms, single_run_seconds)
from lohp.generation import Generator
from lohp.optim import make_optimizer
from lohp.tasks import make_family
from lohp.training import train
from lohp.trajectories import TrajectoryStore, make_config, prepare
from lohp.trajectories.collect import train_runs


@dataclass
class Variant:
    name: str                 # row label
    method: str
    k: int = 2
    optimizers: list[str] | None = None   # store filter (optimizer-mix ablation)
    ablation: bool = False    # runs with ablation_seeds only
    loss_options: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        opt = "" if self.optimizers is None else "-" + "+".join(self.optimizers)
        extra = "".join(f"-{k}{v}" for k, v in sorted(self.loss_options.items()))
        return f"{self.method}-k{self.k}{opt}{extra}"


@dataclass
class DigitsBenchConfig:
    work: str = "runs/bench-digits"
    store_tasks: int = 96
    steps: int = 32
    batch_size: int = 32
    iterations: int = 800
    train_batch: int = 16
    seeds: int = 3
    ablation_seeds: int = 1
    eval_tasks: int = 40
    speedup_tasks: int = 10
    latency_repeats: int = 30
    device: str = "cpu"
    variants: list[Variant] = field(default_factory=lambda: [
        Variant("hypernetwork", "hypernetwork", k=0), Variant("lo-di", "lo-di"), Variant("lo-di-noise", "lo-di-noise"),
        Variant("lo-op", "lo-op"), Variant("lo-hp-literal", "lo-hp-literal"), Variant("lo-hp", "lo-hp"),
        Variant("lo-hp", "lo-hp", k=1), Variant("lo-hp", "lo-hp", k=4),
        Variant("lo-hp[sgd]", "lo-hp", optimizers=["sgd"], ablation=True),
        Variant("lo-hp[adam]", "lo-hp", optimizers=["adam"], ablation=True),
        Variant("lo-hp[sgd+adam]", "lo-hp", optimizers=["sgd", "adam"], ablation=True),
        Variant("lo-hp+hessian", "lo-hp", loss_options={"flatness_weight": 0.1}, ablation=True),
    ])
    l2o_methods: list[str] = field(default_factory=lambda: ["l2o", "l2o-entropy"])
    l2o_seeds: dict[str, int] = field(default_factory=lambda: {"l2o": 3, "l2o-entropy": 1})
    l2o_iterations: int = 400

    @classmethod
    def quick(cls, work: str = "runs/bench-digits-quick") -> "DigitsBenchConfig":
        return cls(work=work, store_tasks=24, steps=16, iterations=40, train_batch=8, seeds=2, eval_tasks=8,
                   speedup_tasks=4, latency_repeats=10, l2o_methods=["l2o"], l2o_seeds={"l2o": 1},
                   l2o_iterations=16)


def _policy_dir(cfg: DigitsBenchConfig, v: Variant, seed: int) -> Path:
    return Path(cfg.work) / "policies" / f"{v.slug}-s{seed}"


def run(cfg: DigitsBenchConfig, note: Callable[[str], None] | None = None,
        train_progress: Callable[[int, int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    note = note or (lambda s: None)
    t_start = time.perf_counter()
    work = Path(cfg.work)
    note("Stage I: preparing the store")
    store_cfg = make_config(family="digits", optimizers=("sgd", "adam", "sam"), tasks=cfg.store_tasks,
                            steps=cfg.steps, batch_size=cfg.batch_size)
    store = prepare(work / "store", store_cfg, device=cfg.device)
    family = store.family()
    hp = {o["name"]: o["hparams"] for o in store.config["optimizers"]}
    tasks = family.heldout_tasks(cfg.eval_tasks)
    T = cfg.steps

    def s0_for(seed: int) -> torch.Tensor:
        return torch.stack([t.init_theta(50_000 + 1000 * seed + i, store.config["init"], store.config["init_sigma"])
                            for i, t in enumerate(tasks)])

    rows: list[dict[str, Any]] = []
    # ------------------------------------------------------------- gradient baselines
    single_run_seconds(tasks[0], "adam", hp["adam"], s0_for(0)[0], 2, cfg.batch_size, 0)  # warm-up (~1 s once)
    for name, opt, steps in (("adam", "adam", T), ("sgd", "sgd", T), ("sam", "sam", T), ("adam-n", "adam", T // 2)):
        note(f"baseline {name}")
        accs, wides, traces = [], [], []
        for seed in range(cfg.seeds):
            s0 = s0_for(seed)
            acc, final = gradient_accuracy(tasks, make_optimizer(opt, **hp[opt]), s0, steps, cfg.batch_size, seed)
            accs.append(float(np.mean(acc)))
            traces.append(_hessian_trace(tasks, final))
            acc_w, _ = gradient_accuracy(tasks, make_optimizer(opt, **hp[opt]), s0 * WIDE, steps, cfg.batch_size, seed)
            wides.append(float(np.mean(acc_w)))
        lat = statistics.median(single_run_seconds(t, opt, hp[opt], s0_for(0)[i], steps, cfg.batch_size, i)
                                for i, t in enumerate(tasks[:5])) * 1e3
        m, s = mean_std(accs)
        rows.append({"method": name, "k": None, "steps": steps, "accuracy": m, "accuracy_std": s,
                     "accuracy_wide": float(np.mean(wides)), "latency_ms": lat, "seeds": accs,
                     "hessian_trace": float(np.mean(traces))})

    # ------------------------------------------------------------- learned optimizers (L2O)
    for name in cfg.l2o_methods:
        accs, wides, traces, lats = [], [], [], []
        for seed in range(cfg.l2o_seeds.get(name, cfg.seeds)):
            note(f"learned optimizer {name} seed {seed}")
            opt = _learned_optimizer(cfg, name, seed)
            s0 = s0_for(seed)
            acc, final = gradient_accuracy(tasks, opt, s0, T, cfg.batch_size, seed)
            accs.append(float(np.mean(acc)))
            traces.append(_hessian_trace(tasks, final))
            acc_w, _ = gradient_accuracy(tasks, opt, s0 * WIDE, T, cfg.batch_size, seed)
            wides.append(float(np.mean(acc_w)))
            lats.append(statistics.median(train_runs([t], opt, s0[i:i + 1], T, cfg.batch_size, record_every=T)[2]
                                          for i, t in enumerate(tasks[:5])) * 1e3)
        m, s = mean_std(accs)
        rows.append({"method": name, "k": None, "steps": T, "accuracy": m, "accuracy_std": s,
                     "accuracy_wide": float(np.mean(wides)), "latency_ms": statistics.median(lats), "seeds": accs,
                     "hessian_trace": float(np.mean(traces))})

    # ------------------------------------------------------------- learned methods
    per_task_acc: dict[str, list[float]] = {}
    for v in cfg.variants:
        seeds = range(cfg.ablation_seeds if v.ablation else cfg.seeds)
        accs, wides, lats, diag, train_s, traces = [], [], [], [], [], []
        for seed in seeds:
            out = _policy_dir(cfg, v, seed)
            note(f"training {v.name} k={v.k} seed {seed}")
            res = train(store, out, v.method, k=max(v.k, 1), loss_options=v.loss_options,
                        train_options={"iterations": cfg.iterations, "batch_size": cfg.train_batch, "seed": seed,
                                       "optimizers": v.optimizers, "eval_every": max(cfg.iterations // 4, 1),
                                       "log_every": max(cfg.iterations // 8, 1),
                                       "checkpoint_every": max(cfg.iterations // 8, 1)},
                        device=cfg.device, progress=train_progress)
            train_s.append(res.get("seconds", float("nan")))
            diag.append({k: res.get(k) for k in ("logpf_real", "cos_real", "dist", "dist_final")})
            gen = Generator.load(out, cfg.device)
            s0 = s0_for(seed)
            theta = gen.generate_batch(tasks, s0=s0)
            traces.append(_hessian_trace(tasks, theta))
            task_acc = [t.evaluate(th)[t.metric_name] for t, th in zip(tasks, theta)]
            if seed == 0:
                per_task_acc[f"{v.name}-k{v.k}"] = task_acc
            accs.append(float(np.mean(task_acc)))
            theta_w = gen.generate_batch(tasks, s0=s0 * WIDE)
            wides.append(float(np.mean([t.evaluate(th)[t.metric_name] for t, th in zip(tasks, theta_w)])))
            lats.append(gen.latency(tasks[0], repeats=cfg.latency_repeats))
        m, s = mean_std(accs)
        row = {"method": v.name, "k": None if v.method == "hypernetwork" else v.k,
               "steps": gen.n_steps, "accuracy": m, "accuracy_std": s, "accuracy_wide": float(np.mean(wides)),
               "latency_ms": statistics.median(l["latency_ms"] for l in lats),
               "latency_with_condition_ms": statistics.median(l["latency_with_condition_ms"] for l in lats),
               "seeds": accs, "train_seconds": float(np.mean(train_s)), "hessian_trace": float(np.mean(traces)),
               "optimizers": v.optimizers or ["sgd", "adam", "sam"],
               "diagnostics": {k: float(np.mean([d[k] for d in diag if d.get(k) is not None] or [np.nan]))
                               for k in ("logpf_real", "cos_real", "dist", "dist_final")}}
        if v.method == "lo-hp" and v.optimizers is None:
            note(f"time-to-accuracy of Adam vs lo-hp k={v.k}")
            row.update(_speedup(cfg, tasks, s0_for(0), per_task_acc[f"{v.name}-k{v.k}"], hp["adam"],
                                row["latency_ms"], T))
        rows.append(row)

    # ------------------------------------------------------------- figure 3: step cosines
    note("cosine between generated and real steps (lo-hp vs lo-op)")
    cosines = {}
    for name in ("lo-hp", "lo-op"):
        v = next((x for x in cfg.variants if x.name == name and x.k == 2), None)
        if v is None:
            continue
        cosines[name] = _step_cosines(cfg, Generator.load(_policy_dir(cfg, v, 0), cfg.device), tasks, s0_for(0),
                                      hp["adam"])
    return {"benchmark": "digits", "config": {**asdict(cfg), "variants": [asdict(v) for v in cfg.variants]},
            "family": family.config(), "heldout_tasks": len(tasks), "threads": torch.get_num_threads(),
            "rows": rows, "cosines": {k: {"mean": float(np.mean(c)), "values": c} for k, c in cosines.items()},
            "seconds": time.perf_counter() - t_start}


def _learned_optimizer(cfg: DigitsBenchConfig, name: str, seed: int):
    """Meta-train (or load the cached) coordinate-wise LSTM optimizer on the store's family."""
    from lohp.bench.l2o import regularizers_for
    from lohp.l2o import LearnedOptimizer, MetaConfig, MetaTrainer

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


def _hessian_trace(tasks, thetas: torch.Tensor) -> float:
    """Mean Hutchinson Hessian trace of the training loss at the given weights (flatness)."""
    from lohp.flatness import hutchinson_trace, task_loss_fn

    g = torch.Generator().manual_seed(0)
    return float(hutchinson_trace(task_loss_fn(list(tasks)), thetas.detach(), 32, g).mean())


def _speedup(cfg: DigitsBenchConfig, tasks, s0: torch.Tensor, lohp_acc: list[float], adam_hp: dict[str, Any],
             latency_ms: float, T: int) -> dict[str, Any]:
    """Adam's full-batch wall time to first reach lo-hp's accuracy on each task / lo-hp latency."""
    ratios, reached = [], 0
    for i, t in enumerate(tasks[:cfg.speedup_tasks]):
        seconds, step = adam_time_to_accuracy(t, s0[i], lohp_acc[i], adam_hp, max_steps=10 * T)
        reached += step is not None
        ratios.append(seconds * 1e3 / latency_ms)  # a lower bound where Adam never reached it
    return {"time_to_accuracy_speedup": float(np.median(ratios)), "speedup_tasks": len(ratios),
            "speedup_adam_reached": reached}


@torch.no_grad()
def _step_cosines(cfg: DigitsBenchConfig, gen: Generator, tasks, s0: torch.Tensor, adam_hp: dict[str, Any]) -> list[float]:
    """Cosines between the policy's step at real Adam states and Adam's own stride-k step."""
    from lohp.optim import make_optimizer

    k = gen.meta["k"]
    thetas, _, _ = train_runs(tasks, make_optimizer("adam", **adam_hp), s0, gen.meta["total_steps"],
                              cfg.batch_size, record_every=k, seed=123)
    b, n1, d = thetas.shape
    cond = torch.stack([t.condition() for t in tasks])
    states = thetas[:, :-1].reshape(-1, d)
    jj = torch.arange(n1 - 1).repeat(b)
    mu = gen.policy(states, jj, cond.repeat_interleave(n1 - 1, 0))
    real = thetas[:, 1:].reshape(-1, d) - states
    return torch.nn.functional.cosine_similarity(mu, real, dim=-1).tolist()


def plots(result: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    a = directory / "digits_accuracy_latency.png"
    plot_accuracy_latency(result["rows"], a, "digits heads, held-out tasks: accuracy vs latency")
    if not result["cosines"]:
        return [a]
    c = directory / "digits_step_cosine.png"
    plot_cosine_histograms({k: v["values"] for k, v in result["cosines"].items()}, c,
                           "generated vs real Adam steps on held-out tasks (paper Fig. 3)")
    return [a, c]
