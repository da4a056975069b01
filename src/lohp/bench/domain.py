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

from lohp.bench.harness import mean_std, plot_accuracy_latency, plot_learning_curves
from lohp.bench.scenario import (
    Variant,
    ablation_order,
    baseline_hparams,
    budget_variants,
    closed_form_row,
    gradient_rows,
    learned_row,
    probe_accuracy,
    public,
    s0_sampler,
    speedup,
    stage_one,
)
from lohp.errors import LohpError
from lohp.tasks.images import ANGLES

DATASETS = {"mnist": "rotated-mnist", "fashion": "rotated-fashion"}
# Whole-network settings (METHOD.md, third prototype): the policy adds a learned gain on the
# structure's surrogate-gradient features, and learns faster than on heads.
MLP_POLICY = {"condition_skip": True, "token_size": 32}
MLP_TRAIN = {"lr": 3e-3, "eval_tasks": 8, "diagnostic_trajectories": 8}  # whole-MLP rollouts are costly


# The earlier SubTB hybrid at d = 25,285 needs to be mostly off-policy (beta 0.9) with K = 2
# rollouts to learn at all (METHOD.md, fourth prototype); the default lo-hp needs nothing.
HYBRID = {"lo-hp-v1": {"beta": 0.9, "rollouts": 2}}


def default_variants(budget: float = 100) -> list[Variant]:
    """Every learned method gets the same training-time budget (seconds, per seed)."""
    return budget_variants(budget, policy_options=MLP_POLICY, train_options=MLP_TRAIN, loss_options=HYBRID)


@dataclass
class DomainBenchConfig:
    work: str = "runs/bench-domain"
    datasets: list[str] = field(default_factory=lambda: ["mnist"])  # --datasets mnist,fashion for both
    domains: list[int] = field(default_factory=lambda: [0, 75])
    n_way: int = 5
    hidden: int = 32
    family_options: dict[str, Any] = field(default_factory=dict)  # extra rotated-family options
    store_tasks: int = 64
    steps: int = 32
    batch_size: int = 32
    train_batch: int = 8
    seeds: int = 3
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
            store = stage_one(work, DATASETS[ds], {"heldout_domain": angle, "n_way": cfg.n_way, "hidden": cfg.hidden, **cfg.family_options},
                              cfg.store_tasks, cfg.steps, cfg.batch_size, device=cfg.device)
            families[ds] = store.family().config()
            T = cfg.steps
            hp, _ = baseline_hparams(store, T, cfg.batch_size, note)
            tasks = store.family().heldout_tasks(cfg.eval_tasks)
            s0_for = s0_sampler(tasks, store)
            part = gradient_rows(tasks, hp, s0_for, cfg.seeds, T, cfg.batch_size,
                                 [("adam", "adam", T), ("sgd", "sgd", T), ("adam-n", "adam", T // 2)], note)
            part.append(closed_form_row("linear-probe", tasks, probe_accuracy))
            for v in cfg.variants:
                row, _ = learned_row(work, store, v, tasks, s0_for, cfg.seeds, 0, cfg.train_batch, note,
                                     cfg.device, cfg.latency_repeats, progress=train_progress)
                if v.method == "lo-hp":
                    note("time-to-accuracy of Adam vs lo-hp")
                    row.update(speedup(tasks, s0_for(0), row["per_task"], hp["adam"], row["latency_ms"], T,
                                       cfg.speedup_tasks))
                part.append(row)
            order = ablation_order(part)
            for r in part:
                r.update({"dataset": ds, "domain": str(angle)})
                if r["method"] == "lo-hp":
                    r["ablation_order_held"] = order["held"]
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
               "accuracy_wide": (float(np.mean([r["accuracy_wide"] for r in group]))
                                 if all(r.get("accuracy_wide") is not None for r in group) else None),
               "latency_ms": float(np.median([r["latency_ms"] for r in group])), "seeds": per_seed.tolist(),
               "dataset": ds, "domain": "mean", "domains": [r["domain"] for r in group]}
        if all(r.get("iterations_per_second") is not None for r in group):
            row["iterations_per_second"] = float(np.mean([r["iterations_per_second"] for r in group]))
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
        for angle in dict.fromkeys(r["domain"] for r in result["rows"] if r["dataset"] == ds and r["domain"] != "mean"):
            curves = directory / f"domain_{ds}_{angle}_learning_curves.png"
            if plot_learning_curves([r for r in result["rows"] if r["dataset"] == ds and r["domain"] == angle], curves,
                                    f"domain {ds}, held-out {angle} deg: held-out accuracy vs training seconds"):
                paths.append(curves)
    return paths
