"""``lohp bench domain``: leave-one-domain-out on rotated MNIST and rotated Fashion-MNIST.

For every (dataset, held-out angle), Stage I and policy training see only the other five
angles; evaluation tasks come from the held-out angle. The generated subset is the whole
MLP (``784 -> hidden -> n_way``). Rows carry ``dataset`` and ``domain`` (the held-out
angle, or ``mean`` over the held-out angles run).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lohp.bench.harness import mean_std, plot_accuracy_latency
from lohp.bench.scenario import (Variant, budgeted, gradient_rows, learned_row, public, s0_sampler, speedup,
                                 stage_one)
from lohp.errors import LohpError
from lohp.tasks.images import ANGLES

DATASETS = {"mnist": "rotated-mnist", "fashion": "rotated-fashion"}
# Whole-network settings (METHOD.md, third prototype): the policy adds a learned gain on the
# structure's surrogate-gradient features, and learns faster than on heads.
MLP_POLICY = {"condition_skip": True, "token_size": 32}
MLP_TRAIN = {"lr": 3e-3, "eval_tasks": 8, "diagnostic_trajectories": 8}  # whole-MLP rollouts are costly


# The hybrid at d = 25,285: mostly off-policy (beta 0.9) with K = 2 rollouts; at the default
# 0.5 / K = 4 the on-policy term's early gradients kept it at chance within a short budget.
HYBRID = {"lo-hp": {"beta": 0.9, "rollouts": 2}, "lo-op": {"rollouts": 2}}


def default_variants(budget: float = 150) -> list[Variant]:
    """Every learned method gets the same wall-clock training budget (seconds, per seed)."""
    return [Variant(name, name, k=0 if name == "hypernetwork" else 2, policy_options=dict(MLP_POLICY),
                    train_options=budgeted(budget, **MLP_TRAIN), loss_options=dict(HYBRID.get(name, {})))
            for name in ("hypernetwork", "lo-di", "lo-di-noise", "lo-op", "lo-hp")]


@dataclass
class DomainBenchConfig:
    work: str = "runs/bench-domain"
    datasets: list[str] = field(default_factory=lambda: ["mnist", "fashion"])
    domains: list[int] = field(default_factory=lambda: [0, 75])
    n_way: int = 5
    hidden: int = 32
    store_tasks: int = 64
    steps: int = 32
    batch_size: int = 32
    train_batch: int = 8
    seeds: int = 2
    eval_tasks: int = 20
    speedup_tasks: int = 5
    latency_repeats: int = 10
    device: str = "cpu"
    variants: list[Variant] = field(default_factory=default_variants)

    def __post_init__(self) -> None:
        bad = [d for d in self.datasets if d not in DATASETS]
        if bad:
            raise LohpError(f"unknown dataset {', '.join(bad)}; choose from {', '.join(DATASETS)}")
        bad = [str(a) for a in self.domains if a not in ANGLES]
        if bad:
            raise LohpError(f"unknown domain {', '.join(bad)}; the domains are the angles "
                            f"{', '.join(map(str, ANGLES))}")

    @classmethod
    def quick(cls, work: str = "runs/bench-domain-quick") -> "DomainBenchConfig":
        return cls(work=work, datasets=["mnist"], domains=[0], store_tasks=16, steps=16, 
                   train_batch=4, seeds=1, eval_tasks=6, speedup_tasks=2, latency_repeats=5,
                   variants=default_variants(15))


def run(cfg: DomainBenchConfig, note: Callable[[str], None] | None = None, train_progress=None) -> dict[str, Any]:
    note = note or (lambda s: None)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    families = {}
    for ds in cfg.datasets:
        for angle in cfg.domains:
            work = Path(cfg.work) / f"{ds}-{angle}"
            note(f"{ds}, held-out {angle} degrees: Stage I on the other domains")
            store = stage_one(work, DATASETS[ds], {"heldout_domain": angle, "n_way": cfg.n_way, "hidden": cfg.hidden},
                              cfg.store_tasks, cfg.steps, cfg.batch_size, device=cfg.device)
            families[ds] = store.family().config()
            hp = {o["name"]: o["hparams"] for o in store.config["optimizers"]}
            T = cfg.steps
            tasks = store.family().heldout_tasks(cfg.eval_tasks)
            s0_for = s0_sampler(tasks, store)
            part = gradient_rows(tasks, hp, s0_for, cfg.seeds, T, cfg.batch_size,
                                 [("adam", "adam", T), ("sgd", "sgd", T), ("adam-n", "adam", T // 2)], note)
            for v in cfg.variants:
                row, _ = learned_row(work, store, v, tasks, s0_for, cfg.seeds, 0, cfg.train_batch, note,
                                     cfg.device, cfg.latency_repeats, progress=train_progress)
                if v.method == "lo-hp":
                    note("time-to-accuracy of Adam vs lo-hp")
                    row.update(speedup(tasks, s0_for(0), row["per_task"], hp["adam"], row["latency_ms"], T,
                                       cfg.speedup_tasks))
                part.append(row)
            for r in part:
                r.update({"dataset": ds, "domain": str(angle)})
            rows += part
    rows += mean_rows(rows)
    return {"benchmark": "domain", "config": {**asdict(cfg), "variants": [asdict(v) for v in cfg.variants]},
            "families": families, "threads": torch.get_num_threads(), "rows": public(rows),
            "seconds": time.perf_counter() - t_start}


def mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and method: the mean over held-out domains (``domain: "mean"``)."""
    out = []
    keys = list(dict.fromkeys((r["dataset"], r["method"], r.get("k")) for r in rows))
    for ds, method, k in keys:
        group = [r for r in rows if (r["dataset"], r["method"], r.get("k")) == (ds, method, k)]
        # Seed s's mean over domains, so the spread is still over seeds.
        per_seed = np.mean([r["seeds"] for r in group], axis=0)
        m, s = mean_std(per_seed)
        row = {"method": method, "k": k, "steps": group[0]["steps"], "accuracy": m, "accuracy_std": s,
               "accuracy_wide": float(np.mean([r["accuracy_wide"] for r in group])),
               "latency_ms": float(np.median([r["latency_ms"] for r in group])), "seeds": per_seed.tolist(),
               "dataset": ds, "domain": "mean", "domains": [r["domain"] for r in group]}
        if all("time_to_accuracy_speedup" in r for r in group):
            row["time_to_accuracy_speedup"] = float(np.median([r["time_to_accuracy_speedup"] for r in group]))
        out.append(row)
    return out


def plots(result: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in dict.fromkeys(r["dataset"] for r in result["rows"]):
        path = directory / f"domain_{ds}_accuracy_latency.png"
        plot_accuracy_latency([r for r in result["rows"] if r["dataset"] == ds and r["domain"] == "mean"], path,
                              f"domain generalization: rotated {ds}, mean over held-out angles (whole MLP generated)")
        paths.append(path)
    return paths
